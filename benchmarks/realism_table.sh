#!/usr/bin/env bash
# Realism table for BENCHMARKS.md: our default raw/clinical outputs vs held-out real NIH CXRs (evaluate-realism).
#
#   bash benchmarks/realism_table.sh [N_PER_RUN] [OUT]
#
# Renders N images (default 4) per CT and view at 512 px — CTs: the embedded example CT and the two shared
# Lung-PET-CT-Dx CTs (A0001: series 3, the soft-tissue kernel "B" of its two 5 mm series; A0002: 8 mm), views PA
# and AP, so 6 N images per setting — and judges each setting against the held-out patients of the shared NIH
# ChestX-ray14 images (restoration/splits.py: 52 of 154; no model here trains on them), inside each image's exposed
# field (evaluate-realism --field exposed, the default) and, for the clinical row, over the whole image too:
#   unframed  - the DRR as it was before issue 10 (example CT, PA, N images; benchmarks/unframed_drrs.py);
#   simple    - --physics simple --display raw (monoenergetic, framed and collimated);
#   full      - --physics full, the physical image (images_physical/);
#   clinical  - --physics full --display clinical (the default dataset image).
# Controls: NIH vs NIH halves (inside every run) and MHH vs held-out NIH (another hospital, CLAHE-processed).
# ROWS="full clinical" limits the settings rendered and judged (default: all four).
set -euo pipefail
N=${1:-4}
OUT=${2:-out/realism_bench}
ROWS=${ROWS:-unframed simple full clinical}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED="$ROOT/../shared/data"
REAL="$SHARED/cxr/nih-chestxray14/images"
MHH="$SHARED/cxr/mhh-covid-19/png"
A0001="$SHARED/ct/lung-pet-ct-dx/Lung_Dx-A0001/04-04-2007-NA-Chest-07990"
A0002=$(ls -d "$SHARED"/ct/lung-pet-ct-dx/Lung_Dx-A0002/*/*/ | head -n 1)
PY=${PYTHON:-python}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
has() { [[ " $ROWS " == *" $1 "* ]]; }

render() {  # $1 physics, $2 display, $3 folder suffix
  for view in PA AP; do
    $PY -m pipeline.cli generate -n "$N" --size 512 --view $view --physics "$1" --display "$2" \
        --no-nodule-free --no-enhance --no-progress --out "$OUT/gen_$3_example_$view"
    $PY -m pipeline.cli generate "$A0001" --series-uid 3 -n "$N" --size 512 --view $view --physics "$1" \
        --display "$2" --no-nodule-free --no-enhance --no-progress --out "$OUT/gen_$3_a0001_$view"
    $PY -m pipeline.cli generate "$A0002" -n "$N" --size 512 --view $view --physics "$1" --display "$2" \
        --no-nodule-free --no-enhance --no-progress --out "$OUT/gen_$3_a0002_$view"
  done
}

collect() {  # $1 set name, $2 generate folder suffix, $3 image subfolder: link every run's images into one folder
  mkdir -p "$OUT/set_$1"
  for run in "$OUT"/gen_"$2"_*; do
    for img in "$run/$3"/*.png; do ln -sf "$(cd "$(dirname "$img")" && pwd)/$(basename "$img")" "$OUT/set_$1/"; done
  done
}

judge() {  # $1 set folder, $2 report folder, further args to evaluate-realism
  local images=$1 report=$2
  shift 2
  echo "== $report"
  $PY -m pipeline.cli evaluate-realism "$images" "$REAL" --real-part held-out "$@" --out "$OUT/$report"
}

if has unframed; then
  $PY "$ROOT/benchmarks/unframed_drrs.py" -n "$N" --out "$OUT/set_unframed"
  judge "$OUT/set_unframed" realism_unframed
fi
if has simple; then
  render simple raw simple
  collect simple simple images
  judge "$OUT/set_simple" realism_simple
fi
if has full || has clinical; then
  render full clinical full
  collect full full images_physical
  collect clinical full images
  has full && judge "$OUT/set_full" realism_full
  if has clinical; then
    judge "$OUT/set_clinical" realism_clinical
    judge "$OUT/set_clinical" realism_clinical_whole --field whole
  fi
fi
echo "== MHH vs held-out NIH (control)"
$PY -m pipeline.cli evaluate-realism "$MHH" "$REAL" --real-part held-out --out "$OUT/realism_mhh"
