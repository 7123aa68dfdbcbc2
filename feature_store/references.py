"""Feature references ("view:feature" strings or a FeatureService) resolved against a catalog."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from feature_store.catalog import Catalog
from feature_store.definitions import FeatureService, FeatureView
from feature_store.errors import FeatureNameCollisionError, FeatureNotFoundError, closest

FeatureRefs = Sequence[str] | FeatureService | str


@dataclass(frozen=True)
class ResolvedFeature:
    view: FeatureView
    feature: str
    output: str  # column name in results


def resolve_features(catalog: Catalog, features: FeatureRefs, full_feature_names: bool) -> list[ResolvedFeature]:
    """Validate references and pick output names; the order of the request is kept."""
    pairs = _pairs(catalog, features)
    out: list[ResolvedFeature] = []
    seen: dict[str, str] = {}
    for view_name, feature in pairs:
        view = catalog.view(view_name)
        view.feature(feature)
        output = f"{view_name}__{feature}" if full_feature_names else feature
        ref = f"{view_name}:{feature}"
        if output in seen:
            if seen[output] == ref:
                continue  # the same feature asked twice: one column
            raise FeatureNameCollisionError(
                f"features {seen[output]!r} and {ref!r} would both be returned as column {output!r}; "
                "pass full_feature_names=True (CLI: --full-feature-names) to get 'view__feature' names.",
                column=output, features=[seen[output], ref],
            )
        seen[output] = ref
        out.append(ResolvedFeature(view, feature, output))
    return out


def _pairs(catalog: Catalog, features: FeatureRefs) -> list[tuple[str, str]]:
    if isinstance(features, FeatureService):
        return [(p.view, f) for p in features.projections for f in p.features]
    if isinstance(features, str):
        features = [features]
    if not features:
        raise FeatureNotFoundError("no features requested; pass 'view:feature' references or a FeatureService.")
    pairs = []
    for ref in features:
        if not isinstance(ref, str) or ref.count(":") != 1:
            raise FeatureNotFoundError(
                f"feature reference {ref!r} is not of the form 'view:feature'."
                f"{closest(str(ref), catalog.all_feature_refs())}",
                reference=str(ref),
            )
        view_name, feature = ref.split(":")
        if view_name not in catalog.views or feature not in catalog.views[view_name].feature_names:
            raise FeatureNotFoundError(
                f"unknown feature {ref!r}.{closest(ref, catalog.all_feature_refs())}", reference=ref
            )
        pairs.append((view_name, feature))
    return pairs
