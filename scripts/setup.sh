#!/usr/bin/env bash
# Creates .venv/ at the repo root with the CPU stack (no CUDA download). Idempotent:
# a second run checks a stamp of this file's hash and returns at once.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
py=${PYTHON:-python3}
stamp="$venv/.setup-stamp"
want=$(cat "$root/scripts/setup.sh" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c 'import torchrec_models' 2>/dev/null; then
  exit 0
fi
echo "setting up $venv (CPU stack: torch 2.13.0, fbgemm-gpu-cpu 1.8.0, torchrec 1.8.0, torchx 0.7.0)"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.13.0
"${pip[@]}" fbgemm-gpu-cpu==1.8.0
# torchrec's metadata asks for the CUDA fbgemm-gpu: install it alone, then its real needs.
"${pip[@]}" --no-deps torchrec==1.8.0
"${pip[@]}" tensordict 'torchmetrics==1.0.3' tqdm pyre-extensions iopath \
  'torchx==0.7.0' numpy pytest tensorboard matplotlib scikit-learn 'kubernetes>=25'
"${pip[@]}" --no-deps -e "$root"
echo "$want" > "$stamp"
