#!/usr/bin/env bash
# The main job on a fresh machine: set up, prepare the corpus, train a small model,
# generate from it, evaluate it on BLiMP and write the report.
#
#   bash scripts/quickstart.sh            # data from $BABYSSM_DATA, else ../shared/data
#   BABYSSM_DATA=/path/to/data bash scripts/quickstart.sh
#
# Everything lands in work/ (prepared corpus, run folder, evaluation outputs).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet -r requirements.txt
fi
export PATH="$PWD/.venv/bin:$PATH"
export BABYSSM_DATA="${BABYSSM_DATA:-$(cd .. && pwd)/shared/data}"
PRESET="${PRESET:-hlru}"
MINUTES="${MINUTES:-4}"

babyssm prepare --data "$BABYSSM_DATA/babylm" --out work/prepared
babyssm stats work/prepared --top 10
babyssm train --preset "$PRESET" --stage all --data work/prepared --out work/run \
    --max-minutes "$MINUTES"
babyssm generate --run work/run --prompt "Once upon a time" --new-chars 200 \
    --temperature 0.8 --top-k 20 --seed 0
echo
babyssm eval bpc --run work/run --data work/prepared --split dev --chars-per-file 200000
babyssm eval blimp --run work/run --pairs blimp_filtered
babyssm report --runs work/run --out work/RESULTS.md
echo "report written to work/RESULTS.md"
