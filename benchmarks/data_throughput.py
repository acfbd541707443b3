"""Criteo data path throughput: TSV preprocessing rows/s and reader examples/s (plain dicts)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path

CRITEO = Path(__file__).resolve().parent.parent / "configs" / "dlrm_criteo_onehot.toml"


def _criteo_config(data_dir: Path, shuffle: bool):
    from torchrec_models.config import load_config

    return load_config(CRITEO, ["data.kind=criteo", f"data.path={data_dir}", "data.eval_fraction=0.01",
                                f"data.shuffle={str(shuffle).lower()}"])


def _tsv(tmpdir: Path, rows: int) -> Path:
    """A generated Criteo TSV of ``rows`` lines, reused when already there."""
    from torchrec_models.data.criteo_synth import write_criteo_tsv

    path = tmpdir / f"criteo_{rows}.txt"
    if not path.is_file():
        write_criteo_tsv(path.with_suffix(".partial"), rows, seed=7).rename(path)
    return path


def preprocess_rows_per_sec(tmpdir: str | Path, rows: int = 500_000, chunk_rows: int = 32768) -> dict:
    """Times ``preprocess`` (one process) on a generated TSV, ids modulo the dlrm_criteo_onehot tables."""
    from torchrec_models.data.criteo_preprocess import PreprocessOptions, preprocess

    tmpdir = Path(tmpdir)
    src = _tsv(tmpdir, rows)
    sizes = _criteo_config(tmpdir, False).model.table_rows()
    started = time.perf_counter()
    meta = preprocess([src], tmpdir / f"pre_{rows}", PreprocessOptions(table_sizes=sizes, chunk_rows=chunk_rows,
                                                                        progress=False))
    seconds = time.perf_counter() - started
    return {"rows": meta["rows"], "seconds": seconds, "rows_per_sec": meta["rows"] / seconds,
            "input_mb_per_sec": src.stat().st_size / seconds / 2**20, "chunk_rows": chunk_rows}


def reader_examples_per_sec(tmpdir: str | Path, batch_size: int = 2048, steps: int = 50, windows: int = 7,
                            warmup_steps: int = 10, rows: int = 262_144, shuffle: bool = True) -> dict:
    """Median examples/s of ``CriteoSource.train_batches`` (rank 0 of 1) over windows of ``steps``,
    after a warm-up, for the dlrm_criteo_onehot shape (26 one-hot features, 100k-row tables)."""
    from torchrec_models.data.criteo_preprocess import PreprocessOptions, preprocess
    from torchrec_models.data.criteo_reader import CriteoSource

    tmpdir = Path(tmpdir)
    data_dir = tmpdir / f"reader_{rows}"
    if not (data_dir / "meta.json").is_file():
        sizes = _criteo_config(tmpdir, False).model.table_rows()
        preprocess([_tsv(tmpdir, rows)], data_dir, PreprocessOptions(table_sizes=sizes, progress=False))
    source = CriteoSource(_criteo_config(data_dir, shuffle))
    batches = source.train_batches(0, 1, batch_size, range(warmup_steps + windows * steps))
    for _ in range(warmup_steps):
        next(batches)
    rates = []
    for _ in range(windows):
        started = time.perf_counter()
        for _ in range(steps):
            next(batches)
        rates.append(steps * batch_size / (time.perf_counter() - started))
    return {"batch_size": batch_size, "steps_per_window": steps, "windows": windows, "shuffle": shuffle,
            "rows": source.train_order.count, "examples_per_sec": statistics.median(rates), "window_rates": rates}


# The synthetic generator on the suites' shapes (config, overrides).
GENERATOR_SHAPES = {
    "criteo_onehot": ("dlrm_criteo_onehot.toml", ()),
    "embedding_heavy": ("dlrm_criteo_onehot.toml", (f"model.num_embeddings_per_feature={[1_000_000] * 8}",
                                                    f"model.multi_hot_sizes={[100] * 8}",
                                                    "model.bottom_mlp=[512,512,64]")),
    "dcnv2_mlperf": ("dlrm_dcnv2_mlperf.toml", ("model.max_rows_per_table=4000000",)),
}


def generator_examples_per_sec(shape: str, batch_size: int = 2048, steps: int = 5, windows: int = 5,
                               device: str = "cpu") -> dict:
    """Median examples/s of the synthetic generator making one rank's batches (fresh steps each time)."""
    import torch

    from torchrec_models.config import load_config
    from torchrec_models.data.synthetic import SyntheticData, SyntheticSpec

    config, overrides = GENERATOR_SHAPES[shape]
    data = SyntheticData(SyntheticSpec.from_config(load_config(CRITEO.parent / config, list(overrides))), device)
    data.batch(0, 0, batch_size)
    rates, step = [], 1
    for _ in range(windows):
        started = time.perf_counter()
        for _ in range(steps):
            data.batch(step, 0, batch_size)
            step += 1
        if device != "cpu":
            torch.cuda.synchronize()
        rates.append(steps * batch_size / (time.perf_counter() - started))
    return {"shape": shape, "batch_size": batch_size, "examples_per_sec": statistics.median(rates),
            "ms_per_batch": 1e3 * batch_size / statistics.median(rates), "window_rates": rates}
