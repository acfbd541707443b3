#!/usr/bin/env bash
# Creates .venv/ at the repo root with the CPU stack (no CUDA download). Idempotent:
# a second run checks a stamp of this file's hash and returns at once.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
py=${PYTHON:-python3}
stamp="$venv/.setup-stamp"
want=$(cat "$root/scripts/setup.sh" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c '
import importlib.util as u, sys
sys.exit(not all(u.find_spec(m) for m in ("torch", "fbgemm_gpu", "torchrec", "torchx", "torchrec_models")))'; then
  exit 0
fi
echo "setting up $venv (CPU stack: torch 2.13.0, fbgemm-gpu-cpu 1.8.0, torchrec 1.8.0, torchx 0.7.0)"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip() {  # quiet; pip's notes about this machine's local index folders are dropped
  local log; log=$(mktemp)
  if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v 'is ignored' "$log" >&2; rm -f "$log"; return 1
  fi
  grep -v -e 'is ignored' -e 'dependency resolver' -e 'requires fbgemm-gpu' "$log" || true
  rm -f "$log"
}
pip torch==2.13.0
pip fbgemm-gpu-cpu==1.8.0
# torchrec's metadata asks for the CUDA fbgemm-gpu: install it alone, then its real needs.
pip --no-deps torchrec==1.8.0
# Besides the stack: matplotlib (benchmark plots), scikit-learn (the linear baseline in the
# quality test), kubernetes (torchx's kubernetes dry runs in the tests), ninja (torch's C++
# extension builder uses it for the native row-wise Adagrad kernel), threadpoolctl (gives numpy's
# OpenBLAS one thread where it multiplies the MLP layers inside torch's threads, train.cpu_gemm).
pip 'tensordict==0.15.3' 'torchmetrics==1.0.3' tqdm pyre-extensions iopath 'torchx==0.7.0' \
  'numpy<3' threadpoolctl pytest ninja tensorboard matplotlib scikit-learn 'kubernetes>=25'
pip --no-deps -e "$root"
echo "$want" > "$stamp"
