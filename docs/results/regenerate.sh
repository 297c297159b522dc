#!/usr/bin/env bash
# Regenerates the committed results pages (docs/results/*.md, their PNGs and results.json) from scratch:
#
#   bash docs/results/regenerate.sh arithmetic   # stage 1 (choose fixed T on validation) + stage 2 (test), ~1.5 h
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
    $KELVIN compare recipes/results/arithmetic-select.yaml --jobs "$JOBS" --output-dir "$OUT/arithmetic-select"
    # The best fixed temperature on the VALIDATION split (never the test set) is stage 2's fixed arm.
    best=$(python3 -c "
import json, sys
r = json.load(open('$OUT/arithmetic-select/results.json'))
arm = r['best_fixed_arm']
print(arm.removeprefix('fixed-'))
")
    echo "stage 1 chose T = $best on the validation split"
    $KELVIN compare recipes/results/arithmetic.yaml --jobs "$JOBS" --output-dir "$OUT/arithmetic" \
        "arms.fixed-best.sampling.temperature=$best"
    publish "$OUT/arithmetic" arithmetic
    mkdir -p docs/results/arithmetic/selection
    cp "$OUT/arithmetic-select"/*.png "$OUT/arithmetic-select/results.json" "$OUT/arithmetic-select/report.md" \
        docs/results/arithmetic/selection/
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
