#!/usr/bin/env bash
# GPU checks in one go: the GPU tests (tests/gpu), one profiled training, then the `gpu` benchmark suite
# if the harness is there. Writes under $OUT (default ./gpu_out): gpu_check.log, gpu_check_summary.json,
# gpu_tests.json, profile_top_ops.txt, bench/{results.jsonl,machine.json,report.md} and bench.tar.gz.
# Every part runs under `timeout` and a failure does not stop the next part; the whole run stays under
# GPU_CHECK_BUDGET_S (default 340 s). Exit status: 0 when every part that ran passed.
#
#   bash scripts/gpu_check.sh                 # from the repo root; PYTHON=... to pick the interpreter
#
# The package need not be installed: the repo root goes on PYTHONPATH. Without torchrec importable it
# uses /tmp/site (from .gpu/install.sh, see ../shared/tools/gpu-bundle.sh), running the installer
# first when the bundle is here and /tmp/site is not.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
PY=${PYTHON:-python3}
out=${OUT:-$root/gpu_out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
log="$out/gpu_check.log"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$SECONDS
budget=${GPU_CHECK_BUDGET_S:-340}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
declare -A rc secs

say() { echo "[gpu_check $((SECONDS - start))s] $*" | tee -a "$log"; }

left() { echo $((budget - (SECONDS - start))); }

# part NAME CAP_S CMD...: runs CMD under timeout min(CAP_S, time left - 10 s), output into the log.
part() {
  local name=$1 cap=$2; shift 2
  local limit=$(( $(left) - 10 ))
  (( limit > cap )) && limit=$cap
  if (( limit < 20 )); then
    say "$name: skipped, $(left) s left"
    rc[$name]=skipped; secs[$name]=0
    return
  fi
  say "$name: start (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  rc[$name]=$?
  secs[$name]=$((SECONDS - t0))
  [[ ${rc[$name]} == 124 || ${rc[$name]} == 137 ]] && say "$name: TIMED OUT after ${limit}s"
  say "$name: exit ${rc[$name]} in ${secs[$name]}s"
}

: >"$log"
say "repo $root, python $PY, out $out"
if ! "$PY" -c "import torchrec" >/dev/null 2>&1; then
  if [[ ! -d /tmp/site/torchrec && -f .gpu/install.sh ]]; then
    part install 200 bash .gpu/install.sh
  fi
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

{ timeout 30 nvidia-smi || echo "nvidia-smi: not available"; } 2>&1 | tee -a "$log"
echo '{}' >"$work/versions.json"
part versions 60 "$PY" -c '
import json, platform, sys, torch, fbgemm_gpu, torchrec
v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
     "cuda_available": torch.cuda.is_available(),
     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
     "fbgemm_gpu": getattr(fbgemm_gpu, "__version__", "?"),
     "torchrec": getattr(torchrec, "__version__", "?"), "torchrec_at": torchrec.__file__}
open(sys.argv[1], "w").write(json.dumps(v))
print(json.dumps(v))' "$work/versions.json"

part tests 200 "$PY" -m pytest -q -rA -p no:cacheprovider tests/gpu --junitxml="$work/gpu_tests.xml"
"$PY" - "$work/gpu_tests.xml" >"$out/gpu_tests.json" <<'PYEOF' || echo '{"error": "no junit xml"}' >"$out/gpu_tests.json"
import json, sys
import xml.etree.ElementTree as ET
cases, counts = [], {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    outcome, message = "passed", ""
    for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        node = case.find(tag)
        if node is not None:
            outcome, message = name, (node.get("message") or "")[:500]
            break
    counts[outcome] += 1
    cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time") or 0),
                  "message": message})
print(json.dumps({**counts, "tests": cases}, indent=2))
PYEOF

# One profiled Criteo-preset training (bf16, batch 8192): the ops by device time and by host time.
part profile 120 "$PY" -m torchrec_models train --config configs/dlrm_criteo_onehot.toml --run-dir "$work/profile_run" \
  --profile "$work/profile" --set sharding.device=cuda train.precision=bf16 train.batch_size=8192 train.steps=30 \
  train.eval_steps=0 train.measure_after=20 train.profile_steps=5
cp "$work/profile/top_ops_rank0.txt" "$out/profile_top_ops.txt" 2>/dev/null

if [[ -f benchmarks/__main__.py ]]; then
  only=()
  for o in ${GPU_BENCH_ONLY:-}; do only+=(--only "$o"); done
  part bench 600 "$PY" -m benchmarks --suite gpu --out "$work/bench" "${only[@]}"
  if [[ -d "$work/bench" ]]; then
    mkdir -p "$out/bench"
    for f in results.jsonl machine.json report.md; do
      [[ -f "$work/bench/$f" ]] && cp "$work/bench/$f" "$out/bench/"
    done
    if [[ ! -f "$work/bench/report.md" && -f "$work/bench/results.jsonl" ]]; then
      "$PY" -m benchmarks report "$work/bench" >>"$log" 2>&1 && cp "$work/bench/report.md" "$out/bench/" 2>/dev/null
    fi
    tar -C "$work" -czf "$out/bench.tar.gz" bench
  fi
else
  say "bench: skipped, benchmarks/__main__.py not found"
  rc[bench]=skipped; secs[bench]=0
fi

"$PY" - "$out" "$((SECONDS - start))" "$work/versions.json" \
  "install=${rc[install]:-not_needed}" "versions=${rc[versions]:-}" "tests=${rc[tests]:-}" "profile=${rc[profile]:-}" "bench=${rc[bench]:-}" \
  "install_s=${secs[install]:-0}" "versions_s=${secs[versions]:-0}" "tests_s=${secs[tests]:-0}" "profile_s=${secs[profile]:-0}" "bench_s=${secs[bench]:-0}" \
  >"$work/summary.txt" 2>&1 <<'PYEOF'
import json, sys
from pathlib import Path
out, elapsed, versions_file, *items = sys.argv[1:]
kv = dict(i.split("=", 1) for i in items)
def load(path):
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
tests = load(Path(out) / "gpu_tests.json")
records = []
results = Path(out) / "bench" / "results.jsonl"
if results.is_file():
    records = [json.loads(l) for l in results.read_text().splitlines() if l.strip()]
parts = {name: {"exit": kv[name], "seconds": int(kv[f"{name}_s"])} for name in ("install", "versions", "tests", "profile", "bench")}
parts["tests"].update({k: tests.get(k) for k in ("passed", "failed", "error", "skipped")})
def short(error):
    """The line of a (possibly multi-line) failure that names the exception."""
    if not error:
        return None
    lines = [l.strip() for l in error.splitlines() if l.strip() and not set(l.strip()) <= set("=-")]
    named = [l for l in lines if "Error" in l or "error" in l]
    return (named or lines or [error])[-1][:300]
parts["bench"]["rows"] = [
    {"row": r.get("row"), "error": short(r.get("error")),
     "examples_per_sec": (r.get("throughput") or {}).get("examples_per_sec"),
     "usd_per_million_examples": (r.get("cost") or {}).get("usd_per_million_examples")}
    for r in records
]
summary = {"elapsed_s": int(elapsed), "versions": load(versions_file), "parts": parts}
(Path(out) / "gpu_check_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"versions: {json.dumps(summary['versions'])}")
for name, p in parts.items():
    extra = ""
    if name == "tests" and p.get("passed") is not None:
        extra = f"  passed {p['passed']}, failed {p['failed']}, errors {p['error']}, skipped {p['skipped']}"
    if name == "bench":
        extra = f"  {len(p['rows'])} row(s)"
        for r in p["rows"]:
            what = f"FAILED {r['error'][:120]}" if r["error"] else f"{r['examples_per_sec']:,.0f} ex/s"
            extra += f"\n    {r['row']}: {what}"
    print(f"{name:9s} exit {p['exit']:>11s}  {p['seconds']:4d}s{extra}")
for t in tests.get("tests", []):
    if t["outcome"] in ("failed", "error"):
        print(f"  {t['outcome']}: {t['test']}: {t['message'][:200]}")
PYEOF
say "summary (elapsed $((SECONDS - start))s):"
tee -a "$log" <"$work/summary.txt"

status=0
for name in install versions tests profile bench; do
  case "${rc[$name]:-skipped}" in 0|skipped) ;; *) status=1 ;; esac
done
exit $status
