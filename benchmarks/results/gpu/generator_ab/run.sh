#!/usr/bin/env bash
# Old tree (.gpu_ab/old) vs this tree on one GPU: the generator alone, then whole trainings, interleaved.
set -u
root=$(pwd); o=${OUT:-/tmp/about}; mkdir -p "$o"; log="$o/ab.log"
export PYTHONUNBUFFERED=1
py() { local tree=$1; shift; if [[ $tree == old ]]; then PYTHONPATH="$root/.gpu_ab/old:/tmp/site" python3 "$@"; else PYTHONPATH="$root:/tmp/site" python3 "$@"; fi; }
for tree in old new; do py $tree .gpu_ab/gen_time.py $tree cuda 2>/dev/null | grep ms | tee -a "$log"; done
train() {  # tree name config batch steps overrides...
  local tree=$1 name=$2 cfg=$3 batch=$4 steps=$5; shift 5
  local d=/tmp/ab/$name-$tree-$RANDOM
  ( [[ $tree == old ]] && cd "$root/.gpu_ab/old"; py $tree -m torchrec_models train --config "$root/$cfg" --run-dir $d \
    --set sharding.device=cuda train.batch_size=$batch train.steps=$steps train.measure_after=50 train.eval_every=0 \
    train.log_every=50 "$@" >>"$o/train.log" 2>&1 )
  python3 -c "import json,sys; s=json.load(open(sys.argv[1]+'/summary.json')); print(sys.argv[2], sys.argv[3], round(s['examples_per_sec']), s['examples_per_sec_percentiles'])" $d $name $tree 2>&1 | tee -a "$log"
}
for pair in 1 2; do
  for tree in old new; do train $tree criteo_bf16_2048 configs/dlrm_criteo_onehot.toml 2048 300 train.precision=bf16; done
  for tree in new old; do train $tree criteo_fp32_2048 configs/dlrm_criteo_onehot.toml 2048 300 train.precision=fp32; done
done
for tree in old new; do train $tree dcnv2_bf16_8192 configs/dlrm_dcnv2_mlperf.toml 8192 200 train.precision=bf16 model.max_rows_per_table=4000000; done
