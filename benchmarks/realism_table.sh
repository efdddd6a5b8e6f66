#!/usr/bin/env bash
# Realism table for BENCHMARKS.md: our default raw/clinical outputs vs real NIH CXRs (evaluate-realism).
#
#   bash benchmarks/realism_table.sh [N_IMAGES] [OUT]
#
# Renders N images (default 12) of the embedded example CT at 512 px in three settings and judges each folder
# against the shared NIH ChestX-ray14 images (../shared/data/cxr, held out: no model here was trained on them):
#   unframed  - the DRR as it was before issue 10: monoenergetic line integral, lungs centred, no collimation
#               (benchmarks/unframed_drrs.py);
#   simple    - --physics simple --display raw (monoenergetic, framed and collimated);
#   full      - --physics full, the physical image (images_physical/);
#   clinical  - --physics full --display clinical (the default dataset image).
# Controls: NIH vs NIH halves (inside every run) and MHH vs NIH (another hospital, CLAHE-processed).
set -euo pipefail
N=${1:-12}
OUT=${2:-out/realism_bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REAL="$ROOT/../shared/data/cxr/nih-chestxray14/images"
MHH="$ROOT/../shared/data/cxr/mhh-covid-19/png"
PY=${PYTHON:-python}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
$PY "$ROOT/benchmarks/unframed_drrs.py" -n "$N" --out "$OUT/unframed"
$PY -m pipeline.cli generate -n "$N" --size 512 --physics simple --display raw --no-nodule-free --no-progress \
    --out "$OUT/gen_simple"
$PY -m pipeline.cli generate -n "$N" --size 512 --physics full --display clinical --no-nodule-free --no-progress \
    --out "$OUT/gen_full"
for name in unframed simple full clinical; do
  case $name in
    unframed) images="$OUT/unframed" ;;
    simple) images="$OUT/gen_simple/images" ;;
    full) images="$OUT/gen_full/images_physical" ;;
    clinical) images="$OUT/gen_full/images" ;;
  esac
  echo "== $name"
  $PY -m pipeline.cli evaluate-realism "$images" "$REAL" --out "$OUT/realism_$name"
done
echo "== MHH vs NIH (control)"
$PY -m pipeline.cli evaluate-realism "$MHH" "$REAL" --out "$OUT/realism_mhh"
