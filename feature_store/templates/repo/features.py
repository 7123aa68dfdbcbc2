"""Feature definitions of the example repo: customer spending behaviour and profile.

Every *.py file of the repo is loaded by `feature-store plan/apply`; objects at module level
(entities, sources, feature views, feature services) are the definitions.
"""

from datetime import timedelta

from feature_store import (
    Count,
    CountDistinct,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    FileSource,
    Last,
    Max,
    Mean,
    PushSource,
    StdDev,
    Sum,
)

customer = Entity(name="customer", join_keys=["customer_id"], description="A card holder.")

transactions = FileSource(
    name="transactions",
    path="data/transactions.parquet",
    timestamp_field="event_timestamp",
    created_timestamp_field="created",  # when the row landed: rows not yet landed at t are invisible
)

# Real-time transactions: store.push("transactions_push", ...) or POST /push. Views over it read the
# batch files plus every pushed event; a push shows up online at once and in training sets later.
transactions_push = PushSource(name="transactions_push", batch_source=transactions)

customer_spend = FeatureView(
    name="customer_spend",
    entities=[customer],
    source=transactions_push,
    features=[
        Mean("amount", window=timedelta(days=90), name="avg_spend_90d"),
        Sum("amount", window=timedelta(days=7), name="spend_7d"),
        Count(window=timedelta(days=30), name="txn_count_30d"),
        Max("amount", window=timedelta(days=30), name="max_spend_30d"),
        Last("category", window=timedelta(days=30), name="last_category"),
        Sum("amount", window=None, name="lifetime_spend"),
    ],
    hop=timedelta(hours=1),
    description="How much and how often a customer spends.",
)

customer_habits = FeatureView(
    name="customer_habits",
    entities=[customer],
    source=transactions_push,
    features=[
        StdDev("amount", window="30d", name="spend_stddev_30d"),
        CountDistinct("category", window="30d", name="categories_30d"),
        Count(window="1h", name="txn_count_1h"),  # default hop: 1 minute (window/24 rounded down)
    ],
    description="How regular a customer's spending is.",
)

customer_profile = FeatureView(
    name="customer_profile",
    entities=[customer],
    source=FileSource(name="profiles", path="data/profiles.parquet", timestamp_field="updated_at"),
    features=[Field("age", "int64"), Field("segment", "string")],
    ttl=timedelta(days=365),
    description="Latest known profile, at most a year old.",
)

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[customer_spend, customer_habits[["spend_stddev_30d", "txn_count_1h"]], customer_profile[["age"]]],
    description="Inputs of the first fraud model.",
)
