#!/usr/bin/env bash
# The whole DiffusionXRay restoration chain on CPU at toy size (64 px HQ), through the CLI only:
#   DRRs (LQ domain) + real MHH CXRs (HQ, split by patient) -> MUNIT-LQ, DDPM-LQ (stage 1, 2) -> (LQ, HQ) pairs
#   -> DDPM-HQ on bicubic / classical / MUNIT / DDPM-LQ pairs -> held-out PSNR/SSIM table + figure
#   -> generate --enhance + evaluate-nodules (nodule contrast kept?).
# Usage: bash benchmarks/restoration_chain.sh [RUN_DIR]   (needs ../shared/data/cxr/mhh-covid-19; ~1.5 h on 2 cores)
# Each step is skipped when its output exists, so an interrupted chain resumes. Two jobs run at a time, 1 thread each.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-runs/chain}"
CFG=benchmarks/configs
MHH="${MHH:-../shared/data/cxr/mhh-covid-19}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUN"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# 0. LQ domain: our own DRRs of the embedded CT (128 px is plenty for 64 px models)
[ -f "$RUN/drr/dataset.json" ] || { log "DRRs"; OMP_NUM_THREADS=2 diffusionxray generate --out "$RUN/drr" -n 30 --size 128 --no-progress; }

# 1. patient split of the real CXRs (the same split DDPM-HQ's own validation uses: 20% of patients held out)
python3 - "$MHH" "$RUN" <<'PY'
import shutil, sys
from pathlib import Path
from restoration.preprocess import list_images, mhh_patient_of, split_by_source
mhh, run = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
train, val = split_by_source(list_images(mhh), 0.2, 0, mhh_patient_of)
for name, paths in (("hq_train", train), ("hq_val", val)):
    for p in paths:
        dest = run / name / p.relative_to(mhh)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            dest.symlink_to(p)
    shutil.copy(mhh / "data.csv", run / name / "data.csv")
print(f"patient split: {len(train)} train / {len(val)} held-out CXRs")
PY

# 2. the two unpaired degraders (real HQ vs DRR LQ), trained on training patients only
[ -d "$RUN/munit/model" ] || { log "train munit"; diffusionxray train munit --config $CFG/munit_cpu.json \
    --hq-dir "$RUN/hq_train" --lq-dir "$RUN/drr/images" -o "$RUN/munit" > "$RUN/munit.log" 2>&1; } &
{
[ -d "$RUN/ddpm_lq1/model" ] || { log "train ddpm-lq stage 1"; diffusionxray train ddpm-lq --config $CFG/ddpm_lq_cpu.json \
    --hq-dir "$RUN/hq_train" --lq-dir "$RUN/drr/images" -o "$RUN/ddpm_lq1" --stage 1 > "$RUN/ddpm_lq1.log" 2>&1; }
[ -d "$RUN/ddpm_lq2/model" ] || { log "train ddpm-lq stage 2"; diffusionxray train ddpm-lq --config $CFG/ddpm_lq_cpu.json \
    --lq-dir "$RUN/drr/images" -o "$RUN/ddpm_lq2" --stage 2 --init-from "$RUN/ddpm_lq1/model" --steps 300 \
    > "$RUN/ddpm_lq2.log" 2>&1; }
} &
wait

# 3. (LQ, HQ) pairs from the real CXRs, for training and for the held-out evaluation
for split in train val; do
    [ -f "$RUN/pairs_munit_$split/pairs.json" ] || diffusionxray make-pairs munit --model "$RUN/munit/model" \
        --hq-dir "$RUN/hq_$split" --out "$RUN/pairs_munit_$split" &
    [ -f "$RUN/pairs_ddpm_lq_$split/pairs.json" ] || diffusionxray make-pairs ddpm-lq --model "$RUN/ddpm_lq2/model" \
        --hq-dir "$RUN/hq_$split" --out "$RUN/pairs_ddpm_lq_$split" --strength 0.3 --steps 20 &
    wait
done

# 4. DDPM-HQ on each pair source (pairs folders: split by the source patient recorded in pairs.json; split.json)
train_hq() {  # name, extra args...
    local name=$1; shift
    [ -f "$RUN/hq_$name/model_index.json" ] || { log "train ddpm-hq ($name)";
        diffusionxray train ddpm-hq --config $CFG/ddpm_hq_cpu.json -o "$RUN/hq_$name" "$@" > "$RUN/hq_$name.log" 2>&1; }
}
train_hq bicubic --hq-dir "$RUN/hq_train" &
train_hq classical --hq-dir "$RUN/hq_train" --set pair_source=classical &
wait
train_hq munit --hq-dir "$RUN/pairs_munit_train/hq" --lq-dir "$RUN/pairs_munit_train/lq" \
    --set pair_source=pairs_dir &
train_hq ddpm_lq --hq-dir "$RUN/pairs_ddpm_lq_train/hq" --lq-dir "$RUN/pairs_ddpm_lq_train/lq" \
    --set pair_source=pairs_dir &
wait

# 5. held-out PSNR/SSIM (+ s/image): every restorer on every kind of held-out pair (bicubic, MUNIT-LQ, DDPM-LQ)
export OMP_NUM_THREADS=2
mkdir -p "$RUN/eval"
for name in bicubic classical munit ddpm_lq; do
    [ -f "$RUN/eval/${name}_on_bicubic.json" ] || diffusionxray evaluate --model "$RUN/hq_$name" \
        --hq-dir "$RUN/hq_val" --steps 20 --json "$RUN/eval/${name}_on_bicubic.json" \
        --figure "$RUN/eval/${name}_on_bicubic.png"
    for pairs in munit ddpm_lq; do
        [ -f "$RUN/eval/${name}_on_$pairs.json" ] || diffusionxray evaluate --model "$RUN/hq_$name" \
            --hq-dir "$RUN/pairs_${pairs}_val/hq" --lq-dir "$RUN/pairs_${pairs}_val/lq" --steps 20 \
            --json "$RUN/eval/${name}_on_$pairs.json" --figure "$RUN/eval/${name}_on_$pairs.png"
    done
done

# 5b. quality vs speed of the samplers (DDPM-HQ on bicubic pairs, held-out patients)
[ -f "$RUN/eval/samplers.json" ] || diffusionxray evaluate --model "$RUN/hq_bicubic" --hq-dir "$RUN/hq_val" \
    --sampler ddpm:1000 --sampler ddim:50 --sampler ddim:20 --sampler dpmsolver++:20 --sampler dpmsolver++:10 \
    --sampler ddim:20:0.4 --json "$RUN/eval/samplers.json" | tee "$RUN/eval/samplers.txt"

# 6. nodules through the restorer: generate --enhance, then contrast inside each footprint before vs after
for name in bicubic munit; do
    [ -f "$RUN/enh_$name/dataset.json" ] || diffusionxray generate --out "$RUN/enh_$name" -n 8 --size 64 \
        --diameter-min 12 --enhance "$RUN/hq_$name" --enhance-steps 20 --no-progress
    diffusionxray evaluate-nodules "$RUN/enh_$name" --json "$RUN/eval/nodules_$name.json"
done
log "done: $RUN/eval"
