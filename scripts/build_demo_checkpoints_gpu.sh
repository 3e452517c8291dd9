#!/usr/bin/env bash
# Build the demo checkpoints side by side on one GPU within a wall-clock budget (a lent GPU is
# held for minutes): the pretraining data is drawn once, then the SAM2 candidates and the SAM3
# one train at once, each fitting its schedule into BUDGET minutes
# (scripts/build_demo_checkpoints.py --time_budget_minutes).
#   bash scripts/build_demo_checkpoints_gpu.sh OUT_DIR [BUDGET_MINUTES]
# Writes OUT_DIR/<name>.tar (the checkpoint folder) and OUT_DIR/<name>.log for each.
set -uo pipefail
out=${1:?usage: build_demo_checkpoints_gpu.sh OUT_DIR [BUDGET_MINUTES]}
budget=${2:-7}
mkdir -p "$out" /tmp/demo_ckpts
prepare() {  # family: draw the recipe's synthetic data once (its dataset_path, shared by the jobs)
  timeout 240 python3 -c "
import sys
from sam_hf.config import Sam2Config, Sam3Config, parse_args
from sam_hf.data.prepare import prepare_synthetic
family = sys.argv[1]
cls = Sam2Config if family == 'sam2' else Sam3Config
cfg = parse_args(cls, ['--config', f'recipes/pretrain/{family}_mini_shapes.yaml'])
prepare_synthetic(cfg, 'minneapple' if family == 'sam2' else 'coco_text')
print(family, 'data in', cfg.dataset_path)
" "$1"
}
SECONDS=0
prepare sam2 >"$out/data.log" 2>&1 &
prepare sam3 >"$out/data3.log" 2>&1 &
wait
cat "$out/data3.log" >>"$out/data.log" && rm "$out/data3.log"
echo "data drawn in ${SECONDS}s" | tee -a "$out/data.log"
run() {  # name family extra-args...
  local name=$1 family=$2
  shift 2
  timeout $((${budget%.*} * 60 + 90)) python3 scripts/build_demo_checkpoints.py --family "$family" \
    --time_budget_minutes "$budget" --assets_dir /tmp/demo_ckpts --asset_name "$name" \
    --output_dir "/tmp/runs/$name" "$@" >"$out/$name.log" 2>&1
  echo "$name exit $?" >>"$out/$name.log"
  tar -C /tmp/demo_ckpts -cf "$out/$name.tar" "$name" 2>>"$out/$name.log"
}
run sam2-mini-shapes sam2 --model_name_or_path sam2-mini &
run sam2-mini-wide-shapes sam2 --model_name_or_path sam2-mini-wide &
run sam3-mini-shapes sam3 &
wait
tail -n 2 "$out"/*.log
