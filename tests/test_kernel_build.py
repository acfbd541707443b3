"""A kernel built once is loaded by any other checkout of the same source without compiling."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from torchrec_models.kernels import build

KERNELS = Path(build.__file__).parent
SOURCE = KERNELS / "linear_relu_cpu.cpp"

OTHER_CHECKOUT = """
import sys
from pathlib import Path
import torch
from torch.utils import cpp_extension
from torchrec_models.kernels import build

def no_compiling(*args, **kwargs):
    raise AssertionError("torch's builder ran")

cpp_extension.load = no_compiling
build.build_extension(Path(sys.argv[1]))
print(hasattr(torch.ops.torchrec_models_linear, "relu_bias_backward"))
"""


def test_another_checkout_loads_the_kept_build_without_compiling(tmp_path: Path) -> None:
    build.build_extension(SOURCE)  # compiled now or earlier, kept either way
    copy = tmp_path / "checkout" / "kernels"
    copy.mkdir(parents=True)
    for path in [SOURCE, *KERNELS.glob("*.h")]:
        shutil.copy(path, copy / path.name)
    done = subprocess.run([sys.executable, "-c", OTHER_CHECKOUT, str(copy / SOURCE.name)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "True"


def test_an_edited_source_is_another_build(tmp_path: Path) -> None:
    edited = tmp_path / SOURCE.name
    edited.write_text(SOURCE.read_text() + "\n// edited\n")
    for header in KERNELS.glob("*.h"):
        shutil.copy(header, tmp_path / header.name)
    assert build._build_name(edited) != build._build_name(SOURCE)
    assert build._build_name(tmp_path / SOURCE.name).startswith("torchrec_models_linear_relu_cpu_")


def test_another_target_arch_is_another_build(monkeypatch):
    """TORCHREC_MODELS_KERNEL_ARCH (make test-avx2) builds apart from the machine's own build."""
    monkeypatch.delenv(build.ARCH_VARIABLE, raising=False)
    native = build._build_name(SOURCE)
    assert "-march=native" in build.cflags()
    monkeypatch.setenv(build.ARCH_VARIABLE, "x86-64-v3")
    assert "-march=x86-64-v3" in build.cflags() and build._build_name(SOURCE) != native
