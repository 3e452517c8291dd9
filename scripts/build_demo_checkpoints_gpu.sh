#!/usr/bin/env bash
# Build the demo checkpoints side by side on one GPU within a wall-clock budget (a lent GPU is
# held for minutes): the pretraining data is drawn once, then the SAM2 candidates and the SAM3
# one train at once, each fitting its schedule into BUDGET minutes
# (scripts/build_demo_checkpoints.py --time_budget_minutes).
#   bash scripts/build_demo_checkpoints_gpu.sh OUT_DIR [BUDGET_MINUTES] [NAME:FAMILY[:FLAGS] ...]
# Without jobs: sam2-mini-shapes, sam2-mini-wide-shapes and sam3-mini-shapes. A job's FLAGS
# (commas for spaces) override its pretraining YAML, e.g.
#   sam3-tracker-mini-shapes:sam3_tracker:--num_correction_clicks,0
# Writes OUT_DIR/<name>.tar (the checkpoint folder) and OUT_DIR/<name>.log for each.
set -uo pipefail
out=${1:?usage: build_demo_checkpoints_gpu.sh OUT_DIR [BUDGET_MINUTES]}
budget=${2:-7}
shift $(($# < 2 ? $# : 2))
jobs_=("$@")
if [ ${#jobs_[@]} -eq 0 ]; then
  jobs_=(sam2-mini-shapes:sam2:--model_name_or_path,sam2-mini
    sam2-mini-wide-shapes:sam2:--model_name_or_path,sam2-mini-wide sam3-mini-shapes:sam3)
fi
mkdir -p "$out" /tmp/demo_ckpts
prepare() {  # family: draw the recipe's synthetic data once (its dataset_path, shared by the jobs)
  timeout 240 python3 -c "
import sys
from sam_hf.config.args import CONFIG_CLASSES
from sam_hf.config import parse_args
from sam_hf.data.prepare import prepare_synthetic
family = sys.argv[1]
cfg = parse_args(CONFIG_CLASSES[family], ['--config', f'recipes/pretrain/{family}_mini_shapes.yaml'])
prepare_synthetic(cfg, 'coco_text' if family == 'sam3' else 'minneapple')
print(family, 'data in', cfg.dataset_path)
" "$1"
}
SECONDS=0
for family in $(printf '%s\n' "${jobs_[@]}" | cut -d: -f2 | sort -u); do
  prepare "$family" >"$out/data_$family.log" 2>&1 &
done
wait
cat "$out"/data_*.log >"$out/data.log" && rm "$out"/data_*.log
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
for job in "${jobs_[@]}"; do
  IFS=: read -r name family flags <<<"$job"
  # shellcheck disable=SC2086 # the flags are meant to split
  run "$name" "$family" ${flags//,/ } &
done
wait
tail -n 2 "$out"/*.log
