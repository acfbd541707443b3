"""The suites: named lists of rows."""
from __future__ import annotations

from typing import Callable

from benchmarks.rows import Row

TINY = "configs/tiny.toml"
CRITEO = "configs/dlrm_criteo_onehot.toml"
DCNV2 = "configs/dlrm_dcnv2_mlperf.toml"
CPU_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise")
EMBEDDING_HEAVY = (
    f"model.num_embeddings_per_feature={[1_000_000] * 8}", f"model.multi_hot_sizes={[100] * 8}",
    "model.bottom_mlp=[512,512,64]", "model.top_mlp=[1024,1024,1024,1]", "train.batch_size=2048",
)
# DCNv2 tables capped so all 26 fit one GPU's HBM with their optimizer state.
DCNV2_ON_ONE_GPU = ("model.max_rows_per_table=4000000",)


def _row(name: str, config: str, *overrides: str, world_size: int = 1, impl: str = "torchrec", **tags: str) -> Row:
    return Row(name=name, config=config, overrides=tuple(overrides), world_size=world_size, impl=impl, tags=tags)


def smoke() -> list[Row]:
    quick = dict(warmup_steps=3, window_steps=4, windows=5, split_steps=2)
    rows = [
        _row("tiny/ws1", TINY, world_size=1),
        _row("tiny/ws2", TINY, "sharding.type=row_wise", world_size=2, sharding="row_wise"),
        Row("tiny/ws2/independent", TINY, world_size=2, independent=True, tags={"sweep": "no_comm_ceiling"}),
        _row("baseline/tiny/ws2", TINY, world_size=2, impl="baseline"),
    ]
    return [Row(**{**r.__dict__, **quick}) for r in rows]


def cpu() -> list[Row]:
    rows = [
        _row(f"criteo/ws{ws}/{p}", CRITEO, f"train.precision={p}", world_size=ws, sharding="planner")
        for ws in (2, 1) for p in ("fp32", "bf16")
    ]
    rows += [_row(f"criteo/ws{ws}/{p}/compiled", CRITEO, f"train.precision={p}", "train.compile=true",
                  world_size=ws, sharding="planner", lever="compile") for ws in (2, 1) for p in ("fp32", "bf16")]
    rows += [_row(f"criteo/ws{ws}/{p}/fbgemm_update", CRITEO, f"train.precision={p}", "train.cpu_table_update=fbgemm",
                  world_size=ws, sharding="planner", lever="cpu_table_update") for ws in (2, 1) for p in ("fp32", "bf16")]
    rows += [_row(f"criteo/ws{ws}/{p}/torch_interaction", CRITEO, f"train.precision={p}", "train.cpu_interaction=torch",
                  world_size=ws, sharding="planner", lever="cpu_interaction") for ws in (2, 1) for p in ("fp32", "bf16")]
    # one process at the 2-process rows' global batch (4096): the scaling comparison at equal batch
    rows += [_row(f"criteo/ws1/{p}/b4096", CRITEO, f"train.precision={p}", "train.batch_size=4096", world_size=1,
                  sharding="planner", sweep="global_batch") for p in ("fp32", "bf16")]
    # two ranks that do not talk: the ceiling of criteo/ws2/{p} on this machine
    rows += [Row(f"criteo/ws2/{p}/independent", CRITEO, (f"train.precision={p}",), world_size=2, independent=True,
                 tags={"sharding": "planner", "sweep": "no_comm_ceiling"}) for p in ("fp32", "bf16")]
    rows += [_row(f"criteo/ws2/{p}/qcomm_fp16", CRITEO, f"train.precision={p}", "sharding.qcomm=fp16",
                  world_size=2, sharding="planner", lever="qcomm") for p in ("fp32", "bf16")]
    rows += [_row(f"criteo/ws2/{p}/balanced", CRITEO, f"train.precision={p}", "sharding.cpu_balance=true",
                  world_size=2, sharding="planner", lever="cpu_balance") for p in ("fp32", "bf16")]
    rows += [_row(f"criteo/ws2/{p}/gloo_transport", CRITEO, f"train.precision={p}", "sharding.cpu_transport=gloo",
                  world_size=2, sharding="planner", lever="cpu_transport") for p in ("fp32", "bf16")]
    rows += [_row(f"criteo/ws2/{p}/torchrec_all_to_all", CRITEO, f"train.precision={p}",
                  "sharding.cpu_pooled_all_to_all=torchrec", world_size=2, sharding="planner",
                  lever="cpu_pooled_all_to_all") for p in ("fp32", "bf16")]
    rows += [_row(f"criteo/ws2/fp32/{t}", CRITEO, f"sharding.type={t}", world_size=2, sharding=t) for t in CPU_TYPES]
    rows += [_row(f"criteo/ws2/fp32/table_wise/adagrad/{k}_kernel", CRITEO, "sharding.type=table_wise",
                  f"sharding.kernel={k}", "train.embedding_optimizer=adagrad", world_size=2, sharding="table_wise")
             for k in ("fused", "dense")]
    rows += [
        _row(f"criteo/ws2/fp32/{t}/b{b}", CRITEO, f"sharding.type={t}", f"train.batch_size={b}", world_size=2,
             sharding=t, sweep="batch")
        for t in ("table_wise", "row_wise") for b in (512, 1024, 4096)
    ]
    rows += [_row(f"embedding_heavy/ws2/{p}", CRITEO, *EMBEDDING_HEAVY, f"train.precision={p}", world_size=2)
             for p in ("fp32", "bf16")]
    return rows + baseline()


SGD = ("train.embedding_optimizer=sgd", "train.dense_optimizer=sgd")


def baseline() -> list[Row]:
    """Plain PyTorch rows, and the torchrec rows of the same shape and optimizer beside them."""
    return [
        _row("baseline/criteo/ws2/fp32", CRITEO, world_size=2, impl="baseline"),
        _row("baseline/criteo/ws1/fp32", CRITEO, world_size=1, impl="baseline"),
        _row("baseline/embedding_heavy/ws2/fp32", CRITEO, *EMBEDDING_HEAVY, world_size=2, impl="baseline"),
        _row("baseline/embedding_heavy/ws1/fp32/sgd", CRITEO, *EMBEDDING_HEAVY, *SGD, world_size=1, impl="baseline"),
        _row("embedding_heavy/ws1/fp32/sgd", CRITEO, *EMBEDDING_HEAVY, *SGD, world_size=1),
        _row("embedding_heavy/ws1/fp32/rowwise_adagrad", CRITEO, *EMBEDDING_HEAVY, "train.dense_optimizer=sgd",
             world_size=1),
        _row("embedding_heavy/ws1/fp32/rowwise_adagrad/fbgemm_update", CRITEO, *EMBEDDING_HEAVY,
             "train.dense_optimizer=sgd", "train.cpu_table_update=fbgemm", world_size=1, lever="cpu_table_update"),
    ]


def scaling() -> list[Row]:
    """The same global batch (4096) over 1, 2 and 4 ranks."""
    return [
        _row(f"scaling/criteo/ws{ws}", CRITEO, "train.precision=bf16", f"train.batch_size={4096 // ws}",
             world_size=ws, sweep="scaling")
        for ws in (1, 2, 4)
    ]


def gpu() -> list[Row]:
    """The headline rows first (a run cut short still has them), then the batch sweep."""
    cuda = ("sharding.device=cuda",)
    dcnv2 = (DCNV2, *cuda, *DCNV2_ON_ONE_GPU, "train.precision=bf16", "train.batch_size=8192")
    rows = [_row(f"gpu/criteo/{p}", CRITEO, *cuda, f"train.precision={p}", sharding="planner")
            for p in ("fp32", "bf16")]
    rows += [_row(f"gpu/dcnv2/{k}", *dcnv2, f"sharding.kernel={k}", kernel=k)
             for k in ("fused", "fused_uvm_caching")]
    rows.append(_row("gpu/dcnv2/fused/compiled", *dcnv2, "train.compile=true", lever="compile"))
    rows.append(_row("gpu/criteo/bf16/compiled", CRITEO, *cuda, "train.precision=bf16", "train.compile=true",
                     sharding="planner", lever="compile"))
    rows.append(_row("gpu/dcnv2/fused/fp16_tables", *dcnv2, "model.embedding_dtype=fp16"))
    rows.append(_row("gpu/dcnv2/fused/b32768", *dcnv2, "train.batch_size=32768", sweep="batch"))
    rows += [_row(f"gpu/criteo/bf16/b{b}", CRITEO, *cuda, "train.precision=bf16", f"train.batch_size={b}",
                  sweep="batch", sharding="planner") for b in (4096, 8192, 16384)]
    # GPU steps take milliseconds: longer windows, so a window is not a handful of syncs
    return [Row(**{**r.__dict__, "warmup_steps": 10, "window_steps": 20, "windows": 5}) for r in rows]


TWO_TOWER = "configs/two_tower_movielens.toml"


def retrieval() -> list[Row]:
    """Two towers on generated MovieLens-layout data (made once, see benchmarks/retrieval_data.py):
    the in-batch softmax's cost against the batch at 100k items, and a 1M-item corpus at 2 ranks."""
    from benchmarks.retrieval_data import synthetic_movielens

    mid = synthetic_movielens(50_000, 100_000, 20)
    big = synthetic_movielens(200_000, 1_000_000, 10)
    common = ("train.epochs=0", "data.shuffle=true")
    rows = [_row(f"retrieval/items100k/ws2/b{b}", TWO_TOWER, f"data.path={mid}", *common, f"train.batch_size={b}",
                 world_size=2, sweep="batch") for b in (256, 1024, 4096)]
    rows.append(_row("retrieval/items100k/ws1/b2048", TWO_TOWER, f"data.path={mid}", *common,
                     "train.batch_size=2048", world_size=1))
    rows.append(_row("retrieval/items1m/ws2/b1024", TWO_TOWER, f"data.path={big}", *common,
                     "train.batch_size=1024", world_size=2))
    return rows


SUITES: dict[str, Callable[[], list[Row]]] = {
    "smoke": smoke, "cpu": cpu, "baseline": baseline, "scaling": scaling, "gpu": gpu, "retrieval": retrieval,
}
