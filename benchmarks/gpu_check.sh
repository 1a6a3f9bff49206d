#!/usr/bin/env bash
# GPU check of the hlru family: the tests on CUDA, then a two-minute bf16 training-speed run of
# the chunked scan (the GPU path) beside the sequential one and the baselines.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (needs a CUDA GPU and a prepared corpus)
#
# PREPARED (default work/prepared) is the output of `babyssm prepare`; BABYSSM_DATA the shared data
# folder the tests read; PYTHON the interpreter (default .venv/bin/python, else python).
# Writes OUT_DIR (default work/gpu_check): pytest.log, train_speed.txt, the two-minute run folders
# and their summary (summary.txt). Not run in the session that wrote it: that machine had no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-work/gpu_check}
PREPARED=${PREPARED:-work/prepared}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/summary.txt"

# 1. The tests; tests/test_hlru.py adds its CUDA cases (chunked scan on the GPU against the
#    float64 CPU reference, step == forward, bf16 autocast) when a GPU is present.
"$PY" -m pytest -q tests/test_hlru.py tests/test_scan.py tests/test_baselines.py 2>&1 | tee "$OUT/pytest.log"

# 2. Training speed of every model at B x T = 32 x 256 and 128 x 256 (bf16 is what training uses);
#    at 128 also compiled (`babyssm train --compile`: the chunked scan is traced into the graph on a GPU).
"$PY" benchmarks/train_speed.py --device cuda --batch-size 32 --steps 20 --warmup 5 | tee -a "$OUT/train_speed.txt"
"$PY" benchmarks/train_speed.py --device cuda --batch-size 128 --steps 20 --warmup 5 --compile \
  --scan-kernels chunked sequential | tee -a "$OUT/train_speed.txt"

# 3. Two minutes of real training each (bf16 autocast, the loop's own chars_per_s), chunked vs sequential.
for kernel in chunked sequential; do
  rm -rf "$OUT/hlru_$kernel"
  "$PY" -m babyssm train --preset hlru --set scan_kernel=$kernel --device cuda --data "$PREPARED" \
    --out "$OUT/hlru_$kernel" --max-minutes 2 --batch-size 128 --eval-every 200 > "$OUT/hlru_$kernel.log" 2>&1
  "$PY" - "$OUT/hlru_$kernel" <<'PYEOF' | tee -a "$OUT/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl") if '"chars_per_s"' in l]
cfg = json.load(open(f"{sys.argv[1]}/config.json"))
print(f"{sys.argv[1]}: {cfg['chars_seen']:,} chars in 2 min, last chars/s {rows[-1]['chars_per_s']:,.0f}, "
      f"dev bpc {cfg['stage_results']['0'].get('dev_bpc')}")
PYEOF
done
