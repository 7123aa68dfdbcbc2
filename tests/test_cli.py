"""The command line, on a temporary copy of the example repo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from feature_store.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--repo", str(repo), *args], catch_exceptions=False,
                              terminal_width=200)


def test_plan_apply_list_describe(example_repo: Path) -> None:
    planned = run(example_repo, "plan")
    assert planned.exit_code == 0
    assert "customer_spend" in planned.output and "add" in planned.output

    applied = run(example_repo, "apply")
    assert applied.exit_code == 0 and "version 1" in applied.output
    assert "No changes" in run(example_repo, "plan").output

    listed = run(example_repo, "list").output
    for text in ("Entities", "customer_id", "Sources", "transactions", "Feature views", "customer_profile",
                 "Features", "customer_spend:avg_spend_90d", "Feature services", "fraud_model_v1"):
        assert text in listed

    described = run(example_repo, "describe", "customer_spend").output
    assert "avg_spend_90d = mean(amount) over 90d" in described


def test_plan_shows_changes_and_invalidation(example_repo: Path) -> None:
    run(example_repo, "apply")
    features = example_repo / "features.py"
    features.write_text(features.read_text().replace('window=timedelta(days=7), name="spend_7d"',
                                                     'window=timedelta(days=14), name="spend_7d"'))
    out = run(example_repo, "plan").output
    assert "change" in out and "customer_spend" in out and "features" in out
    assert "rebuilds" in out


def test_plan_shows_each_changed_field_old_to_new(example_repo: Path) -> None:
    run(example_repo, "apply")
    features = example_repo / "features.py"
    text = features.read_text().replace('window=timedelta(days=7), name="spend_7d"',
                                        'window=timedelta(days=14), name="spend_7d"')
    text = text.replace('        Max("amount", window=timedelta(days=30), name="max_spend_30d"),\n', "")
    features.write_text(text.replace("ttl=timedelta(days=365)", "ttl=timedelta(days=180)"))
    result = CliRunner().invoke(main, ["--repo", str(example_repo), "plan"], env={"COLUMNS": "150"})
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert any("customer_spend features[spend_7d].window: 7d \u2192 14d customer_spend" in line for line in lines)
    assert any("features[max_spend_30d] removed (was max(amount) over 30d)" in line for line in lines)
    assert any("customer_profile ttl: 365d \u2192 180d customer_profile" in line for line in lines)
    assert any("fraud_model_v1 features[customer_spend]: removed max_spend_30d" in line for line in lines)


def test_materialize_and_training_set(example_repo: Path, tmp_path: Path) -> None:
    run(example_repo, "apply")
    materialized = run(example_repo, "materialize")
    assert materialized.exit_code == 0 and "customer_spend" in materialized.output
    again = run(example_repo, "materialize")
    assert again.exit_code == 0

    output = tmp_path / "train.parquet"
    result = run(example_repo, "training-set", "--entities", "data/entity_rows.parquet",
                 "--service", "fraud_model_v1", "--output", str(output))
    assert result.exit_code == 0, result.output
    train = pd.read_parquet(output)
    entities = pd.read_parquet(example_repo / "data" / "entity_rows.parquet")
    assert len(train) == len(entities)
    assert list(train["customer_id"]) == list(entities["customer_id"])
    assert "avg_spend_90d" in train.columns and "age" in train.columns


def test_training_set_from_sql_and_features(example_repo: Path) -> None:
    run(example_repo, "apply")
    query = f"SELECT customer_id, event_timestamp FROM read_parquet('{example_repo}/data/entity_rows.parquet') LIMIT 7"
    result = run(example_repo, "training-set", "--entities", query, "--features",
                 "customer_spend:spend_7d,customer_profile:segment", "--full-feature-names")
    assert result.exit_code == 0, result.output
    assert "7 rows" in result.output and "customer_spend__spend_7d" in result.output


def test_errors_are_one_line_and_exit_1(example_repo: Path) -> None:
    run(example_repo, "apply")
    result = CliRunner().invoke(main, ["--repo", str(example_repo), "training-set", "--entities",
                                       "data/entity_rows.parquet", "--features", "customer_spend:avg_spend_90"])
    assert result.exit_code == 1
    assert "FeatureNotFoundError" in result.output and "customer_spend:avg_spend_90d" in result.output
    assert "Traceback" not in result.output


def test_commands_need_a_repo(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--repo", str(tmp_path), "plan"])
    assert result.exit_code == 1 and "feature-store init" in result.output


def test_list_before_apply_says_to_apply(example_repo: Path) -> None:
    result = CliRunner().invoke(main, ["--repo", str(example_repo), "list"])
    assert result.exit_code == 1 and "feature-store apply" in result.output


def test_init_scaffolds_a_working_repo(tmp_path: Path) -> None:
    target = tmp_path / "new_repo"
    result = CliRunner().invoke(main, ["init", str(target), "--no-data"])
    assert result.exit_code == 0, result.output
    assert (target / "features.py").read_text() == (ROOT / "feature_repo" / "features.py").read_text()
    assert "project: new_repo" in (target / "feature_store.yaml").read_text()
    again = CliRunner().invoke(main, ["init", str(target)])
    assert again.exit_code != 0 and "already" in again.output


def test_template_matches_example_repo() -> None:
    template = ROOT / "feature_store" / "templates" / "repo"
    for name in ("feature_store.yaml", "features.py"):
        assert (template / name).read_text() == (ROOT / "feature_repo" / name).read_text(), name


def test_cli_docs_are_current() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_cli_docs
    finally:
        sys.path.pop(0)
    assert (ROOT / "docs" / "cli.md").read_text() == gen_cli_docs.render(), (
        "docs/cli.md is stale: run python scripts/gen_cli_docs.py"
    )


@pytest.mark.parametrize("command", [["feature-store"], [sys.executable, "-m", "feature_store"]])
def test_entry_points(command: list[str], example_repo: Path) -> None:
    exe = Path(sys.executable).parent / "feature-store"
    if command == ["feature-store"]:
        command = [str(exe)]
    result = subprocess.run([*command, "--repo", str(example_repo), "plan"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "customer_spend" in result.stdout


def test_get_online_and_verify(example_repo: Path) -> None:
    run(example_repo, "apply")
    assert run(example_repo, "materialize").exit_code == 0
    online = run(example_repo, "get-online", "--entities", "customer_id=1,2,999999",
                 "--features", "customer_spend:txn_count_30d,customer_profile:age")
    assert online.exit_code == 0, online.output
    assert "NOT_FOUND" in online.output and "customer_id=999999" in online.output
    verified = run(example_repo, "verify", "--sample", "50")
    assert verified.exit_code == 0, verified.output
    assert "Online values equal offline values" in verified.output


def test_verify_fails_when_not_materialized(example_repo: Path) -> None:
    run(example_repo, "apply")
    result = CliRunner().invoke(main, ["--repo", str(example_repo), "verify", "--sample", "10"])
    assert result.exit_code == 1
    assert "not materialized online" in result.output


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_push_a_file_then_read_and_verify(example_repo: Path, tmp_path: Path, suffix: str) -> None:
    run(example_repo, "apply")
    assert run(example_repo, "materialize").exit_code == 0
    now = pd.Timestamp.now(tz="UTC")
    rows = pd.DataFrame({"transaction_id": [9_000_001, 9_000_002], "customer_id": [424242, 424242],
                         "event_timestamp": [now.isoformat()] * 2,
                         "amount": [10.0, 2.5], "category": ["food", "travel"]})
    path = tmp_path / f"events{suffix}"
    {".csv": lambda: rows.to_csv(path, index=False), ".parquet": lambda: rows.to_parquet(path),
     ".jsonl": lambda: rows.to_json(path, orient="records", lines=True)}[suffix]()
    pushed = run(example_repo, "push", "transactions_push", "--file", str(path))
    assert pushed.exit_code == 0, pushed.output
    assert "Pushed 2 row(s)" in pushed.output
    online = run(example_repo, "get-online", "--entities", "customer_id=424242", "--features",
                 "customer_spend:txn_count_30d,customer_spend:spend_7d")
    assert "12.5" in online.output and "PRESENT" in online.output
    assert run(example_repo, "verify", "--sample", "50").exit_code == 0


def test_push_rerun_with_the_same_push_id_counts_once(example_repo: Path, tmp_path: Path) -> None:
    run(example_repo, "apply")
    assert run(example_repo, "materialize").exit_code == 0
    path = tmp_path / "events.csv"
    pd.DataFrame({"transaction_id": [9_000_011], "customer_id": [434343], "amount": [7.25], "category": ["food"],
                  "event_timestamp": [pd.Timestamp.now(tz="UTC").isoformat()]}).to_csv(path, index=False)
    for attempt in range(2):
        pushed = run(example_repo, "push", "transactions_push", "--file", str(path), "--push-id", "batch-17")
        assert pushed.exit_code == 0, pushed.output
        assert ("Pushed 1 row(s)" if attempt == 0 else "was made before") in pushed.output, pushed.output
    online = run(example_repo, "get-online", "--entities", "customer_id=434343", "--features",
                 "customer_spend:spend_7d")
    assert "7.25" in online.output and "14.5" not in online.output
    assert run(example_repo, "verify", "--sample", "50").exit_code == 0
    path.write_text(path.read_text().replace("7.25", "8.0"))
    conflict = CliRunner().invoke(main, ["--repo", str(example_repo), "push", "transactions_push", "--file", str(path),
                                         "--push-id", "batch-17"])
    assert conflict.exit_code == 1 and "PushIdConflictError" in conflict.output, conflict.output


def test_push_errors_name_the_column(example_repo: Path, tmp_path: Path) -> None:
    run(example_repo, "apply")
    path = tmp_path / "bad.csv"
    pd.DataFrame({"transaction_id": [1], "customer_id": [1], "event_timestamp": ["2026-01-01T00:00:00Z"],
                  "amount": ["a lot"], "category": ["food"]}).to_csv(path, index=False)
    result = CliRunner().invoke(main, ["--repo", str(example_repo), "push", "transactions_push", "--file", str(path)])
    assert result.exit_code == 1
    assert "PushDataError" in result.output and "'amount'" in result.output


def test_materialize_help_says_it_writes_both_stores() -> None:
    text = CliRunner().invoke(main, ["materialize", "--help"], terminal_width=100).output
    assert "offline DuckDB" in text and "online store" in text
    listed = CliRunner().invoke(main, ["--help"], terminal_width=100).output
    summary = next(line for line in listed.splitlines() if line.strip().startswith("materialize"))
    assert "online" in summary and "offline" in summary


def test_generate_data_ends_at_end_and_is_reproducible(tmp_path: Path) -> None:
    def generate(folder: str, *extra: str) -> dict[str, pd.DataFrame]:
        repo = tmp_path / folder
        result = CliRunner().invoke(main, ["--repo", str(repo), "generate-data", "--customers", "40", "--days", "20",
                                           "--seed", "5", *extra])
        assert result.exit_code == 0, result.output
        return {name: pd.read_parquet(repo / "data" / f"{name}.parquet")
                for name in ("transactions", "profiles", "entity_rows")}

    first = generate("a", "--end", "2026-03-01")
    said = CliRunner().invoke(main, ["--repo", str(tmp_path / "c"), "generate-data", "--days", "20", "--end",
                                     "2026-03-01"]).output
    assert "from 2026-02-09 00:00:00 to 2026-03-01 00:00:00 UTC" in " ".join(said.split())
    for name, frame in generate("b", "--end", "2026-03-01").items():
        pd.testing.assert_frame_equal(frame, first[name])  # same seed and end: the same data
    end, start = pd.Timestamp("2026-03-01", tz="UTC"), pd.Timestamp("2026-02-09", tz="UTC")
    tx = first["transactions"]
    assert start <= tx["event_timestamp"].min() and tx["created"].max() < end  # exported at end: all landed
    assert first["profiles"]["updated_at"].max() < end and first["entity_rows"]["event_timestamp"].max() < end

    later = generate("d", "--end", "2026-03-03")  # another end: the same data, two days later
    shifted = later["transactions"].copy()
    shifted[["event_timestamp", "created"]] -= pd.Timedelta(days=2)
    pd.testing.assert_frame_equal(shifted, tx)
