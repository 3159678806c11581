#!/usr/bin/env bash
# The Ray Train path on a GPU, offline (issue 14, item 6): install the wheel bundle that
# benchmarks/gpu/build_bundle.py built, write a toy corpus (numpy/scipy voices), prepare it with
# `prepare csv`, then train it with jobs/train.py (use_gpu: true, NCCL) three times: AMP off,
# bf16, fp16, printing each run's gpu_peak_mem_mb (reported through Ray Train) and throughput;
# then the supply/demand benchmark (Ray Data crops/s with N data CPUs vs the ECAPA C=512 step on
# this GPU, and the data CPUs per GPU each shipped space needs).
# Run from the repository root on the GPU machine:  bash benchmarks/gpu/run_on_gpu.sh
# Everything it writes goes under $WORK (default /tmp/speakertune_gpu); a summary table also
# goes to $OUT/gpu_runs.tsv when $OUT is set (the device tool brings $OUT back).
set -euo pipefail
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/speakertune_gpu}
BUNDLE=${BUNDLE:-benchmarks/gpu/bundle}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}  # seconds per training run; three runs + setup < 8 minutes
SD_TIMEOUT=${SD_TIMEOUT:-180}    # the supply/demand benchmark after them
SD_CPUS=${SD_CPUS:-1 2 4 8}      # data CPUs it streams with
T0=$(date +%s)
stamp() { echo "[gpu-check +$(( $(date +%s) - T0 ))s] $*"; }

stamp "python: $($PY -V 2>&1); bundle: $(ls "$BUNDLE"/*.whl | wc -l) wheels, $(du -sm "$BUNDLE" | cut -f1) MB"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
rm -rf "$WORK" && mkdir -p "$WORK/site"
# --target: the bundle goes in its own folder on PYTHONPATH (which Ray's workers inherit), over
# the machine's preinstalled torch/torchaudio/pandas/pyarrow/numpy/scipy. --no-deps: the bundle
# is the complete set (checked when it was built); nothing is fetched.
if $PY -m pip --version > /dev/null 2>&1; then
  $PY -m pip install --quiet --no-index --no-deps --target "$WORK/site" "$BUNDLE"/*.whl
else  # no pip there: unpack the wheels, keeping the executable bits of Ray's binaries
  $PY - "$WORK/site" "$BUNDLE"/*.whl <<'EOF'
import os, sys, zipfile
for whl in sys.argv[2:]:
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            path = z.extract(info, sys.argv[1])
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
EOF
fi
export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0
stamp "bundle installed"
$PY - <<'EOF'
import ray, torch, torchaudio, pandas, pyarrow, numpy, scipy
import speakertune.train.driver  # the train path imports without the omitted packages
print(f"ray {ray.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"torchaudio {torchaudio.__version__}, pandas {pandas.__version__}, "
      f"pyarrow {pyarrow.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}")
assert torch.cuda.is_available(), "no CUDA device visible to torch"
print("GPU:", torch.cuda.get_device_name(0), "bf16 supported:", torch.cuda.is_bf16_supported())
EOF

$PY benchmarks/gpu/make_corpus.py "$WORK/toy" --speakers 40 --utts 10 --seconds 3 --banks
$PY jobs/prepare.py csv "$WORK/toy/corpus.csv" --out "$WORK/data"
stamp "corpus prepared"

SUMMARY="$WORK/gpu_runs.tsv"
printf 'amp\trc\twall_s\tgpu_peak_mem_mb\tutterances_per_s\tepoch_time_s\tval_eer\n' > "$SUMMARY"
for AMP in off bf16 fp16; do
  stamp "train amp=$AMP"
  start=$(date +%s)
  rc=0
  LOG="$WORK/train_$AMP.log"
  timeout "$RUN_TIMEOUT" $PY jobs/train.py --config benchmarks/gpu/train_gpu.yaml \
    --set data.manifest="$WORK/data/manifest.parquet" --set trainer.amp="$AMP" \
    --storage "$WORK/runs" --name "amp_$AMP" > "$LOG" 2>&1 || rc=$?
  # the per-epoch lines, the command's summary (gpu_peak_mem_mb from Ray Train's result) and
  # any error; the whole log stays in $WORK (and comes back under $OUT)
  grep -E '^\[speakertune\]|^(epochs|EER|gpu_peak_mem_mb|error)|Error|NCCL' "$LOG" \
    | grep -v '^\s*$' | tail -n 20 || true
  [ "$rc" = 0 ] || tail -n 30 "$LOG"
  wall=$(( $(date +%s) - start ))
  # the last epoch's metrics as Ray Train reported them (history.jsonl, written by rank 0)
  $PY - "$WORK/runs/amp_$AMP" "$AMP" "$rc" "$wall" >> "$SUMMARY" <<'EOF' || true
import sys
from speakertune.train.progress import read_history
run, amp, rc, wall = sys.argv[1:]
rows = read_history(run)
last = rows[-1] if rows else {}
cols = ["gpu_peak_mem_mb", "utterances_per_s", "epoch_time_s", "val_eer"]
vals = [f"{last[c]:.4g}" if isinstance(last.get(c), (int, float)) else "NA" for c in cols]
print("\t".join([amp, rc, wall, *vals]))
EOF
  stamp "amp=$AMP done (rc=$rc, ${wall}s): $(tail -n 1 "$SUMMARY")"
done
echo "== summary (last epoch per run) =="
column -t -s $'\t' "$SUMMARY" || cat "$SUMMARY"

# Supply/demand: the toy corpus and toy noise/RIR banks (no espeak here), Ray Data with each of
# SD_CPUS data CPUs in both frontend.device modes, the step measured on this GPU (AMP off and
# bf16, the faster counts), then the per-space sizing table.
stamp "supply/demand benchmark"
sd_rc=0
# shellcheck disable=SC2086
timeout "$SD_TIMEOUT" $PY benchmarks/sizing/supply_demand.py --manifest "$WORK/data/manifest.parquet" \
  --banks "$WORK/toy" --cpus $SD_CPUS --amp off bf16 > "$WORK/supply_demand.log" 2>&1 || sd_rc=$?
grep -E '^\||^(rule|step alone|corpus)' "$WORK/supply_demand.log" || true
[ "$sd_rc" = 0 ] || tail -n 30 "$WORK/supply_demand.log"
stamp "supply/demand done (rc=$sd_rc)"
if [ -n "${OUT:-}" ]; then  # small files only: the checkpoints stay behind
  cp "$SUMMARY" "$WORK"/train_*.log "$WORK/supply_demand.log" "$OUT/" || true
  for AMP in off bf16 fp16; do
    mkdir -p "$OUT/amp_$AMP"
    cp "$WORK/runs/amp_$AMP"/{history.jsonl,progress.log} "$OUT/amp_$AMP/" 2>/dev/null || true
  done
fi
stamp "total"
# nonzero exit when any training run or the benchmark failed
! grep -qP '^\S+\t[1-9]' "$SUMMARY" && [ "$sd_rc" = 0 ]
