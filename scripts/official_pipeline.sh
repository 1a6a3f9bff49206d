#!/usr/bin/env bash
# Score a run with the official BabyLM 2025 pipeline (babylm/evaluation-pipeline-2025) on this
# machine, and print each set's pipeline average beside babyssm's own score of the same run.
#
#   bash scripts/official_pipeline.sh RUN_DIR PIPELINE_DIR OUT_DIR [SET ...]
#
# RUN_DIR     a babyssm run folder, exported to OUT_DIR/hf (`babyssm export`)
# PIPELINE_DIR a clone of the pipeline (git clone https://github.com/babylm/evaluation-pipeline-2025)
# OUT_DIR     a new folder outside the run: the export, the pipeline's results and logs
# SET         blimp_filtered (default), supplement_filtered, ewok_filtered, entity_tracking,
#             wug_adj_nominalization: folders of $BABYSSM_DATA/eval, named as the pipeline's
#             evaluation_data/full_eval names them
# PIPELINE_PYTHON  an interpreter with the pipeline's requirements (torch, transformers 4.51.3,
#             datasets, scipy; default: python). BABYSSM: the babyssm command (default: babyssm).
#
# The pipeline writes OUT_DIR/results; babyssm's score is RUN_DIR/eval/SET.json's
# pipeline_score, written by `babyssm eval blimp` / `babyssm eval zero-shot` (run them first).
# Only the pipeline's sentence_zero_shot tasks are run: its reading task and fine-tuning are not.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n 2,18p "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
RUN=$(cd "$1" && pwd)
PIPELINE=$(cd "$2" && pwd)
OUT=$3
shift 3
SETS=("${@:-blimp_filtered}")
DATA=${BABYSSM_DATA:?set BABYSSM_DATA to the folder whose eval/ holds the evaluation sets}
PY=${PIPELINE_PYTHON:-python}
BABYSSM=${BABYSSM:-babyssm}
[ -f "$PIPELINE/evaluation_pipeline/sentence_zero_shot/run.py" ] ||
    { echo "official_pipeline: $PIPELINE is not a clone of babylm/evaluation-pipeline-2025" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ -f "$OUT/hf/config.json" ] || $BABYSSM export --run "$RUN" --out "$OUT/hf"

task_of() {
    case $1 in
        blimp_filtered|supplement_filtered|blimp) echo blimp ;;
        ewok_filtered) echo ewok ;;
        entity_tracking) echo entity_tracking ;;
        wug_adj_nominalization) echo wug_adj ;;
        *) echo "official_pipeline: unknown set $1" >&2; exit 2 ;;
    esac
}

printf '%-24s %10s %10s %8s\n' set pipeline babyssm seconds
for set in "${SETS[@]}"; do
    task=$(task_of "$set")
    [ -d "$DATA/eval/$set" ] || { echo "official_pipeline: $DATA/eval/$set is missing" >&2; exit 2; }
    start=$(date +%s)
    (cd "$PIPELINE" && "$PY" -m evaluation_pipeline.sentence_zero_shot.run --model_path_or_name "$OUT/hf" \
        --backend causal --task "$task" --data_path "$DATA/eval/$set" --save_predictions \
        --output_dir "$OUT/results") > "$OUT/$set.log" 2>&1 ||
        { echo "official_pipeline: the pipeline failed on $set; see $OUT/$set.log" >&2; exit 1; }
    seconds=$(( $(date +%s) - start ))
    report="$OUT/results/hf/main/zero_shot/causal/$task/$set/best_temperature_report.txt"
    # The report's last number: the average accuracy (a correlation for wug).
    theirs=$(grep -Eo -- '-?[0-9]+\.[0-9]+' "$report" | tail -n 1)
    ours=$(python3 -c "import json, sys; print(f\"{json.load(open(sys.argv[1]))['pipeline_score']:.2f}\")" \
        "$RUN/eval/$set.json" 2>/dev/null || echo "-")
    printf '%-24s %10s %10s %8s\n' "$set" "$theirs" "$ours" "$seconds"
done
