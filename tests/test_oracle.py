"""The equivalence oracle: every sharding type at world size 2 against one process.

Same seed, same global batches (each rank its slice), 20 steps: every parameter agrees
within 1e-5. Dense weights use SGD here: Adagrad's first steps divide a gradient by its own
magnitude, so float reduction-order noise on near-zero gradients grows to ~3e-5.
Column-wise types are run with an element-wise table optimizer (SGD): row-wise Adagrad keeps
one state value per row of each shard, over that shard's columns only, so column-wise
sharding changes its arithmetic by construction. That difference is asserted too.
"""
from __future__ import annotations

import pytest

from conftest import TINY
from torchrec_models.train.oracle import max_abs_diff, run_variants

pytestmark = pytest.mark.slow

STEPS, PER_RANK_BATCH, WORLD = 20, 64, 2
BASE = ["sharding.min_partition=8", "train.warmup_steps=0", "train.dense_optimizer=sgd", "train.lr=0.05"]
ROWWISE = ["data_parallel", "table_wise", "row_wise", "table_row_wise"]
COLUMNS = ["column_wise", "table_column_wise"]


def _variants() -> dict[str, list[str]]:
    out = {k: BASE + [f"sharding.type={k}"] for k in ROWWISE}
    out.update({k: BASE + [f"sharding.type={k}", "train.embedding_optimizer=sgd"] for k in COLUMNS})
    out["column_wise_rowwise_adagrad"] = BASE + ["sharding.type=column_wise"]
    return out


@pytest.fixture(scope="module")
def runs(rank_server_for_module):
    variants = _variants()
    sharded = run_variants(TINY, variants, WORLD, PER_RANK_BATCH, STEPS)
    reference = {
        "rowwise_adagrad": BASE + ["sharding.type=table_wise"],
        "sgd": BASE + ["sharding.type=table_wise", "train.embedding_optimizer=sgd"],
    }
    single = run_variants(TINY, reference, 1, WORLD * PER_RANK_BATCH, STEPS)
    return sharded, single


@pytest.mark.parametrize("kind", ROWWISE + COLUMNS)
def test_matches_one_process(runs, kind: str) -> None:
    sharded, single = runs
    plan = sharded[kind]["plan"]
    assert {t["sharding_type"] for t in plan.values()} == {kind}
    if kind != "data_parallel":
        assert any(len(t["shards"]) > 1 or t["ranks"] == [1] for t in plan.values())
    reference = single["sgd" if kind in COLUMNS else "rowwise_adagrad"]["state"]
    diffs = max_abs_diff(sharded[kind]["state"], reference)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-5, f"{kind}: {worst} differs by {diffs[worst]:.3g}"


def test_weights_actually_moved(runs) -> None:
    """Guards the oracle itself: training must change the tables, or agreement proves nothing."""
    sharded, single = runs
    from torchrec_models.sharding.table_init import table_values

    key = "model.sparse_arch.embedding_bag_collection.embedding_bags.t_cat_0.weight"
    trained = single["rowwise_adagrad"]["state"][key]
    initial = table_values(0, 0, trained.shape[0], range(trained.shape[0]), range(trained.shape[1]))
    assert float((trained - initial).abs().max()) > 1e-3


def test_column_wise_with_rowwise_adagrad_differs_by_construction(runs) -> None:
    sharded, single = runs
    diffs = max_abs_diff(sharded["column_wise_rowwise_adagrad"]["state"], single["rowwise_adagrad"]["state"])
    table_diffs = [v for k, v in diffs.items() if "embedding_bags" in k]
    assert max(table_diffs) > 1e-3
