#!/usr/bin/env bash
# Regenerates the committed results pages (docs/results/*.md, their PNGs and results.json) from scratch:
#
#   bash docs/results/regenerate.sh arithmetic   # selection (validation, seeds 100-103) + the comparison (24 seeds)
#   bash docs/results/regenerate.sh smollm2      # SmolLM2-135M-Instruct fixed vs TAMPO (installs the model offline)
#
# Every run is single-threaded (trainer.torch_threads: 1) and two run at a time (--jobs 2); re-running resumes: finished
# runs are kept, an interrupted one continues from its last checkpoint. Runs go to runs/results/ (override: OUT=...).
set -euo pipefail
cd "$(dirname "$0")/../.."
KELVIN=${KELVIN:-kelvin}
OUT=${OUT:-runs/results}
JOBS=${JOBS:-2}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

publish() {  # publish <comparison folder> <page name>: the report, its figures and results.json under docs/results/
    local from=$1 name=$2
    mkdir -p "docs/results/$name"
    cp "$from"/*.png "$from/results.json" "docs/results/$name/"
    {
        echo "Regenerate: \`bash docs/results/regenerate.sh $name\` (runs go to runs/results/; re-running resumes)."
        echo
        sed "s#](\([a-z0-9_-]*\.png\))#]($name/\1)#g" "$from/report.md"
    } > "docs/results/$name.md"
}

case "${1:-}" in
arithmetic)
    # One command: the selection runs (validation split, seeds 100-103) choose the fixed arm's temperature, then
    # every arm trains afresh on the comparison's 24 seeds (kelvin/experiments/selection.py).
    $KELVIN compare recipes/results/arithmetic.yaml --jobs "$JOBS" --output-dir "$OUT/arithmetic"
    publish "$OUT/arithmetic" arithmetic
    ;;
smollm2)
    test -d models/smollm2-135m-instruct || $KELVIN models install smollm2-135m-instruct models/smollm2-135m-instruct
    $KELVIN compare recipes/results/smollm2.yaml --jobs "$JOBS" --output-dir "$OUT/smollm2"
    publish "$OUT/smollm2" smollm2
    ;;
*)
    echo "usage: bash docs/results/regenerate.sh arithmetic|smollm2" >&2
    exit 2
    ;;
esac
