#!/usr/bin/env bash
# Retrain the shipped restorer from scratch on CPU: DRRs -> MUNIT-LQ, DDPM-LQ -> (LQ, HQ) pairs -> DDPM-HQ.
#
#   bash scripts/train_restorer.sh [--tiny] [--install] [RUN_DIR]       (default RUN_DIR: runs/restorer)
#
#   (a) the DRR set (LQ domain): a `generate --no-enhance` run per CT and view (the embedded CT and the two
#       Lung-PET-CT-Dx CTs, PA and AP), 512 px, the default render path (physics full, clinical display);
#   (b) MUNIT-LQ and DDPM-LQ (stage 1, then stage 2), real CXRs (NIH + MHH, train patients only) vs those DRRs;
#   (c) (LQ, HQ) pairs from the NIH train patients with both degraders (HQ 1024, LQ 512), and from the held-out
#       patients for measuring (never trained on);
#   (d) DDPM-HQ: the paper's baseline on bicubic pairs (RUN/ddpm_hq_bicubic1), then the shipped model, that network
#       fine-tuned on light-touch DDPM-LQ pairs (strength LIGHT_STRENGTH=0.1, LIGHT_STEPS=50 grid) and tone-anchored
#       MUNIT-LQ pairs mixed SHIP_WEIGHTS="3 1" (RUN/ddpm_hq), and the baseline given the same steps on bicubic
#       pairs (RUN/ddpm_hq_bicubic); both set to sample DDIM 8 steps at strength 0.5 with low-frequency anchoring
#       (ANCHOR_SIGMA=3 output px);
#   (e) with --install only: copy the shipped model (model_index.json, unet/, scheduler/) into
#       restoration/pretrained/ddpm-hq/ (its README.md model card is left as it is).
#
# Resumable step by step: a stage whose output is complete is skipped (RUN/.done/STAGE), and an interrupted training
# continues from its last checkpoint-N when the script is run again. Two jobs run at a time, one core each.
# Budgets (optimizer steps; the defaults fit about 3 h on 2 CPU cores, docs/TRAINING.md):
#   MUNIT_STEPS=2266 DDPM_LQ1_STEPS=2000 DDPM_LQ2_STEPS=1000 BASELINE_STEPS="700 1400" SHIP_STEPS=2000 (SHIP_LR=1e-4)
#   (a list of budgets runs one after the other, each continuing the last with the cosine learning-rate schedule
#   restarting over the new total: the shipped model's baseline had 700 steps continued to 1400.)
# Data: NIH=../shared/data/cxr/nih-chestxray14 (HQ, 1024²) MHH=../shared/data/cxr/mhh-covid-19 (extra real data for
# the degraders; MHH= to leave it out) CTS=../shared/data/ct/lung-pet-ct-dx (CTS= for the embedded CT only).
# --tiny: 64 px DRRs of the embedded CT, 2-step trainings at LQ 64: a smoke test of the whole chain in minutes.
set -euo pipefail

TINY=0
INSTALL=0
RUN=""
for arg in "$@"; do
    case "$arg" in
        --tiny) TINY=1 ;;
        --install) INSTALL=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        -*) echo "train_restorer.sh: unknown option $arg (expected --tiny, --install, RUN_DIR)" >&2; exit 2 ;;
        *) [ -z "$RUN" ] || { echo "train_restorer.sh: one RUN_DIR only (got $RUN and $arg)" >&2; exit 2; }; RUN="$arg" ;;
    esac
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUN="$(mkdir -p "${RUN:-runs/restorer}" && cd "${RUN:-runs/restorer}" && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
DXR=("$PY" -m pipeline.cli)
NIH="${NIH-../shared/data/cxr/nih-chestxray14}"
MHH="${MHH-../shared/data/cxr/mhh-covid-19}"
CTS="${CTS-../shared/data/ct/lung-pet-ct-dx}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

if [ "$TINY" = 1 ]; then
    : "${MUNIT_STEPS:=2}" "${DDPM_LQ1_STEPS:=2}" "${DDPM_LQ2_STEPS:=2}" "${BASELINE_STEPS:=2 4}" "${SHIP_STEPS:=2}"
    : "${LIGHT_STRENGTH:=0.5}" "${LIGHT_STEPS:=4}"
    SIZE=64 N_PA=2 N_AP=1
    PRE='preprocess={"size": 64}'                     # degraders work at LQ 64 -> pairs HQ 128 / LQ 64
    LQ=(--crop-size 32 --set "$PRE" --set checkpointing_steps=1 --set batch_size=2)
    MUNIT=(--crop-size 64 --set "$PRE" --set checkpointing_steps=1 --set batch_size=1 --set 'model={"n_scales": 1}')
    HQ=(--set lq_size=64 --set crop_size=32 --set batch_size=2 --set checkpointing_steps=1 --set validation_steps=2
        --set num_val_images=2)
    SDEDIT=(--steps 2)
else
    : "${MUNIT_STEPS:=2266}" "${DDPM_LQ1_STEPS:=2000}" "${DDPM_LQ2_STEPS:=1000}" "${BASELINE_STEPS:=700 1400}" "${SHIP_STEPS:=2000}"
    : "${LIGHT_STRENGTH:=0.1}" "${LIGHT_STEPS:=50}"
    SIZE=512 N_PA=8 N_AP=4
    LQ=(--set batch_size=16 --set checkpointing_steps=200 --set checkpoints_total_limit=2)
    MUNIT=(--set checkpointing_steps=100 --set checkpoints_total_limit=2)
    HQ=()
    SDEDIT=(--steps 10)
fi
[ -d "$NIH" ] || { echo "train_restorer.sh: NIH=$NIH: no such folder of real 1024² CXRs" >&2; exit 2; }
REAL=(--hq-dir "$NIH")
[ -z "$MHH" ] || REAL+=(--hq-dir "$MHH")

mkdir -p "$RUN/.done" "$RUN/logs"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
# join PID...: wait for every background stage; stop the script if any failed
join() {
    local failed=0 pid
    for pid in "$@"; do wait "$pid" || failed=1; done
    [ "$failed" = 0 ] || { log "stopping: a stage failed; rerun the same command to resume"; exit 1; }
}
# stage NAME CMD...: run CMD (output to RUN/logs/NAME.log) unless NAME is done; mark it done when CMD succeeds
stage() {
    local name=$1; shift
    if [ -f "$RUN/.done/$name" ]; then log "$name: done"; return 0; fi
    log "$name: running (log: $RUN/logs/$name.log)"
    if "$@" >> "$RUN/logs/$name.log" 2>&1; then
        touch "$RUN/.done/$name"; log "$name: finished"
    else
        log "$name: FAILED (see $RUN/logs/$name.log)"; return 1
    fi
}

# (a) the LQ domain: raw DRRs (no enhancement), one generate run per CT and view
render() {  # name, generate args...
    local name=$1; shift
    stage "drr_$name" "${DXR[@]}" generate "$@" --size "$SIZE" --no-nodule-free --no-progress --no-enhance \
        --out "$RUN/drr/$name"
}
render example_pa -n "$N_PA" --view PA --seed 101
render example_ap -n "$N_AP" --view AP --seed 104
DRR=(--lq-dir "$RUN/drr/example_pa/images" --lq-dir "$RUN/drr/example_ap/images")
if [ "$TINY" = 0 ] && [ -n "$CTS" ]; then
    A1="$CTS/Lung_Dx-A0001"
    A2="$CTS/Lung_Dx-A0002"
    render a0002_pa "$A2" -n "$N_PA" --view PA --seed 102
    render a0001_pa "$A1" --series-uid 3 -n "$N_PA" --view PA --seed 103
    render a0002_ap "$A2" -n "$N_AP" --view AP --seed 105
    render a0001_ap "$A1" --series-uid 3 -n "$N_AP" --view AP --seed 106
    for name in a0002_pa a0001_pa a0002_ap a0001_ap; do DRR+=(--lq-dir "$RUN/drr/$name/images"); done
fi

# (b) the two unpaired degraders, side by side (real images: the train part of the patient split only)
stage munit "${DXR[@]}" train munit "${REAL[@]}" "${DRR[@]}" -o "$RUN/munit" --steps "$MUNIT_STEPS" \
    --set progress=false "${MUNIT[@]}" &
MUNIT_PID=$!
{
    stage ddpm_lq1 "${DXR[@]}" train ddpm-lq "${REAL[@]}" "${DRR[@]}" -o "$RUN/ddpm_lq1" --stage 1 \
        --steps "$DDPM_LQ1_STEPS" --set progress=false "${LQ[@]}"
    stage ddpm_lq2 "${DXR[@]}" train ddpm-lq "${DRR[@]}" -o "$RUN/ddpm_lq2" --stage 2 \
        --init-from "$RUN/ddpm_lq1/model" --steps "$DDPM_LQ2_STEPS" --set progress=false "${LQ[@]}"
} &
LQ_PID=$!
join "$MUNIT_PID" "$LQ_PID"

# (c) (LQ, HQ) pairs of the NIH train patients, whole images (HQ 1024, LQ 512)
stage pairs_munit "${DXR[@]}" make-pairs munit --model "$RUN/munit/model" --hq-dir "$NIH" --split train \
    --out "$RUN/pairs_munit" --no-progress &
P1=$!
stage pairs_ddpm_lq "${DXR[@]}" make-pairs ddpm-lq --model "$RUN/ddpm_lq2/model" --hq-dir "$NIH" --split train \
    --out "$RUN/pairs_ddpm_lq" --strength 0.3 "${SDEDIT[@]}" --no-progress &
P2=$!
join "$P1" "$P2"
stage pairs_munit_heldout "${DXR[@]}" make-pairs munit --model "$RUN/munit/model" --hq-dir "$NIH" --split held_out \
    --out "$RUN/pairs_munit_heldout" --no-progress &
P1=$!
stage pairs_ddpm_lq_heldout "${DXR[@]}" make-pairs ddpm-lq --model "$RUN/ddpm_lq2/model" --hq-dir "$NIH" \
    --split held_out --out "$RUN/pairs_ddpm_lq_heldout" --strength 0.3 "${SDEDIT[@]}" --no-progress &
P2=$!
join "$P1" "$P2"

# (c') the shipped model's training pairs: DDPM-LQ at a light touch (SDEdit strength LIGHT_STRENGTH on a LIGHT_STEPS
# grid: its LQ is then closest to our DRRs' fine detail), and the MUNIT-LQ pairs with their coarse tone anchored to
# the HQ (MUNIT-LQ's misalignment is mostly tone; benchmarks/anchor_pairs.py, σ 8 LQ px)
stage pairs_ddpm_lq_light "${DXR[@]}" make-pairs ddpm-lq --model "$RUN/ddpm_lq2/model" --hq-dir "$NIH" --split train \
    --out "$RUN/pairs_ddpm_lq_light" --strength "$LIGHT_STRENGTH" --steps "$LIGHT_STEPS" --no-progress &
P1=$!
stage pairs_munit_anchored "$PY" benchmarks/anchor_pairs.py "$RUN/pairs_munit" "$RUN/pairs_munit_anchored" --sigma 8 &
P2=$!
join "$P1" "$P2"

# (d) DDPM-HQ. First the paper's baseline, the network on bicubic pairs (BASELINE_STEPS: RUN/ddpm_hq_bicubic1).
# The shipped model fine-tunes it (--init-from) for SHIP_STEPS on the light DDPM-LQ and anchored MUNIT-LQ pairs
# mixed SHIP_WEIGHTS (RUN/ddpm_hq); the baseline gets the same SHIP_STEPS on bicubic pairs (RUN/ddpm_hq_bicubic,
# same budget). Both then sample with DDIM, 8 steps at strength 0.5 (4 UNet passes), anchored (ANCHOR_SIGMA
# output px: the restorer adds detail, the DRR keeps its exposure and tone; restoration/low_frequency_anchor.py).
# budgets NAME "STEPS..." ARGS...: `train ddpm-hq ARGS` to each budget in turn (each run resumes the last)
budgets() {
    local name=$1 list=$2 steps; shift 2
    for steps in $list; do stage "${name}_$steps" "${DXR[@]}" train ddpm-hq --steps "$steps" "$@" || return 1; done
}
: "${SHIP_WEIGHTS:=3 1}" "${SHIP_LR:=1e-4}" "${ANCHOR_SIGMA:=3}"
WEIGHTS="[$(echo $SHIP_WEIGHTS | tr ' ' ',')]"
FINE=(--set lq_noise_std=0 --set "lr=$SHIP_LR" --set validation_steps=100000)
SHIPPED="$RUN/ddpm_hq" BASELINE="$RUN/ddpm_hq_bicubic"
budgets ddpm_hq_bicubic1 "$BASELINE_STEPS" --config cpu -o "$RUN/ddpm_hq_bicubic1" --hq-dir "$NIH" "${HQ[@]}"
budgets ddpm_hq "$SHIP_STEPS" --config cpu -o "$SHIPPED" --init-from "$RUN/ddpm_hq_bicubic1" \
    --set pair_source=pairs_dir --set "pairs_dirs=[\"$RUN/pairs_ddpm_lq_light\", \"$RUN/pairs_munit_anchored\"]" \
    --set "pairs_weights=$WEIGHTS" "${FINE[@]}" "${HQ[@]}" &
H1=$!
budgets ddpm_hq_bicubic "$SHIP_STEPS" --config cpu -o "$BASELINE" --init-from "$RUN/ddpm_hq_bicubic1" \
    --hq-dir "$NIH" "${FINE[@]}" "${HQ[@]}" &
H2=$!
join "$H1" "$H2"
for model in "$SHIPPED" "$BASELINE"; do
    "$PY" -c "import sys; from restoration.pipeline_ddpm_hq import configure_sampler as c
c(sys.argv[1], 'ddim', num_inference_steps=8, strength=0.5, anchor_sigma=float(sys.argv[2]))" "$model" "$ANCHOR_SIGMA"
done

# (e) ship it (only when asked)
if [ "$INSTALL" = 1 ]; then
    DEST="${PRETRAINED_DIR:-$ROOT/restoration/pretrained/ddpm-hq}"
    log "installing $SHIPPED into $DEST"
    mkdir -p "$DEST"
    TMP="$(mktemp -d "$(dirname "$DEST")/.ddpm-hq.XXXXXX")"
    cp -r "$SHIPPED/model_index.json" "$SHIPPED/unet" "$SHIPPED/scheduler" "$TMP/"
    "$PY" -c "import sys; from restoration.pipeline_ddpm_hq import load_pipeline; load_pipeline(sys.argv[1])" "$TMP"
    mkdir -p "$DEST"
    rm -rf "$DEST/unet" "$DEST/scheduler" "$DEST/model_index.json"
    mv "$TMP/unet" "$TMP/scheduler" "$TMP/model_index.json" "$DEST/"
    rmdir "$TMP"
fi
log "done: shipped model $SHIPPED, baseline $BASELINE"
