"""The ``data`` suite: Criteo preprocessing rows/s and reader examples/s on generated files."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.data_throughput import (
    GENERATOR_SHAPES, generator_examples_per_sec, preprocess_rows_per_sec, reader_examples_per_sec,
)
from torchrec_models import runinfo


def run_data_suite(out: Path, training_examples_per_sec: float | None = None) -> dict[str, Any]:
    """Measures both and writes ``out/data.json`` and ``out/report.md``."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "hardware": runinfo.hardware(), "versions": runinfo.versions(), "git_sha": runinfo.git_sha(),
            "preprocess": preprocess_rows_per_sec(tmp),
            "reader_shuffled": reader_examples_per_sec(tmp, shuffle=True),
            "reader_in_order": reader_examples_per_sec(tmp, shuffle=False),
            "generator": [generator_examples_per_sec(shape) for shape in GENERATOR_SHAPES],
        }
    (out / "data.json").write_text(json.dumps(result, indent=2) + "\n")
    hw = result["hardware"]
    lines = [
        "# Data benchmark", "", f"Machine: {hw['cpu']}, {hw['cores']} cores.", "",
        "| what | rate |", "| --- | --- |",
        f"| preprocess criteo (one process) | {result['preprocess']['rows_per_sec']:,.0f} rows/s "
        f"({result['preprocess']['input_mb_per_sec']:.0f} MiB/s of text) |",
        f"| reader, batch 2048, 26 one-hot features, shuffled | "
        f"{result['reader_shuffled']['examples_per_sec']:,.0f} examples/s |",
        f"| reader, same, in file order | {result['reader_in_order']['examples_per_sec']:,.0f} examples/s |",
    ]
    lines += [f"| synthetic generator, {g['shape']}, batch {g['batch_size']} | {g['examples_per_sec']:,.0f} "
              f"examples/s ({g['ms_per_batch']:.1f} ms a batch) |" for g in result["generator"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return result
