"""Planning without a process group: meta-device models on CUDA topologies, forced types."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY
from torchrec_models.config import load_config
from torchrec_models.models import build_model
from torchrec_models.sharding.planner import describe_plan, make_plan


def _meta_model(cfg):
    return build_model(cfg.model, torch.device("meta"), cfg.train.seed)


def test_plans_for_eight_cuda_ranks_without_process_group() -> None:
    cfg = load_config(TINY, ["sharding.hbm_gb=80"])
    result = make_plan(cfg, _meta_model(cfg), world_size=8, local_world_size=8, device_type="cuda")
    plan = describe_plan(result.plan)
    assert set(plan) == {f"t_cat_{i}" for i in range(8)}
    for table in plan.values():
        assert table["ranks"] and all(0 <= r < 8 for r in table["ranks"])
    assert result.source == "planner"
    assert len(result.estimate) == 8
    assert sum(r["hbm_bytes"] for r in result.estimate) > 0


@pytest.mark.parametrize("kind", ["table_wise", "row_wise", "column_wise", "table_row_wise", "data_parallel"])
def test_forced_type_on_cuda_comes_from_the_planner(kind: str) -> None:
    cfg = load_config(TINY, [f"sharding.type={kind}", "sharding.min_partition=8"])
    result = make_plan(cfg, _meta_model(cfg), 8, 8, "cuda")
    assert {t["sharding_type"] for t in describe_plan(result.plan).values()} == {kind}
    assert result.source == "planner"


@pytest.mark.parametrize("kind", ["row_wise", "table_row_wise"])
def test_row_wise_on_cpu_is_hand_built_with_planner_estimate(kind: str) -> None:
    cfg = load_config(TINY, [f"sharding.type={kind}", "sharding.kernel=fused"])
    result = make_plan(cfg, _meta_model(cfg), 2, 2, "cpu")
    plan = describe_plan(result.plan)
    assert {t["sharding_type"] for t in plan.values()} == {kind}
    assert {t["compute_kernel"] for t in plan.values()} == {"fused"}
    assert result.source.startswith("hand-built")
    rows = {t: sum(s[2][0] for s in d["shards"]) for t, d in plan.items()}
    assert rows == {f"t_cat_{i}": n for i, n in enumerate(cfg.model.table_rows())}
    assert result.estimate and all(r["ddr_bytes"] > 0 for r in result.estimate)


def test_per_table_constraint() -> None:
    cfg = load_config(TINY, ["sharding.per_table.t_cat_0=column_wise", "sharding.min_partition=8"])
    plan = describe_plan(make_plan(cfg, _meta_model(cfg), 4, 4, "cuda").plan)
    assert plan["t_cat_0"]["sharding_type"] == "column_wise"
    assert len(plan["t_cat_0"]["shards"]) == 2
