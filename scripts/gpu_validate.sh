#!/usr/bin/env bash
# One-shot GPU validation: run this once on a machine with an NVIDIA GPU and send back the folder.
#
#   scripts/gpu_validate.sh [OUT_DIR]        (default ./gpu-validation-YYYYmmdd-HHMMSS)
#
# It calibrates the card (a device profile), replays real allocator histories through the
# allocator model, runs the gpu-marked tests, a small real sweep of every runner (and of the
# device-total settings), estimates of the same cells, its report and `membench env --json`, all
# into OUT_DIR as it goes, with a log of everything (OUT_DIR/validate.log). Every step is bounded
# by `timeout` (exit 124 when it ran out).
# A failing step does not stop the others; each step's exit code is in OUT_DIR/exit_codes.tsv and
# in the summary at the end. Installs nothing beyond `pip install -e .[dev]`, and only if membench
# is not importable already. Set PYTHON to choose the interpreter (default: python3, or
# .venv/bin/python when it exists).
set -u

REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-./gpu-validation-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/validate.log"
CODES="$OUT/exit_codes.tsv"
: > "$CODES"
cd "$REPO"

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

# step NAME COMMAND...: run, tee output into the log, record the exit code, never abort.
step() {
  local name="$1"; shift
  log "=== $name: $*"
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  printf '%s\t%s\n' "$name" "$rc" >> "$CODES"
  log "=== $name: exit $rc"
}

# bounded STEP SECONDS COMMAND...: a step that may not run longer than SECONDS (exit 124 if it does).
bounded() {
  local name="$1" seconds="$2"; shift 2
  step "$name" timeout --kill-after=30 "$seconds" "$@"
}

log "membench GPU validation into $OUT (python: $PYTHON)"
if ! timeout 300 "$PYTHON" -c "import membench, pytest" >/dev/null 2>&1; then
  bounded install 1800 "$PYTHON" -m pip install -e ".[dev]"
fi
# The console script may not be on PATH; run the same entry point through $PYTHON (an array, not
# a function, so `timeout` can run it).
membench=("$PYTHON" -c "import sys; sys.argv[0] = 'membench'; from membench.cli import main; main()")

bounded nvidia-smi 60 nvidia-smi
bounded env 300 bash -c '"$@" env --json > "$0"' "$OUT/env.json" "${membench[@]}"
# The card's own figures first, on an idle GPU in a fresh process (docs/device-total.md): a device
# profile written to $OUT/profiles/calibrated.toml (and .json) as soon as it is measured.
bounded calibrate 600 "${membench[@]}" device calibrate calibrated --out "$OUT/profiles"
# The allocator model against the real allocator: a recorded torch.cuda.memory._snapshot()
# history replayed, its segments byte for byte (docs/allocator.md), and the measured device
# terms of a real cell (docs/device-total.md).
bounded allocator-replay 900 "$PYTHON" -m pytest -m gpu -v -rs tests/planning \
  tests/measure/test_cuda_terms.py tests/planning/test_card_calibration.py --junitxml="$OUT/pytest-device-total.xml"
# A GPU model without a committed baseline fails the gate; the run's measurement is saved under
# $OUT/new-gpu-baseline/<gpu> so it can be committed as membench/baselines/gpu/<gpu>.
bounded gpu-tests 3600 env MEMBENCH_REQUIRE_GPU=1 MEMBENCH_NEW_GPU_BASELINE_DIR="$OUT/new-gpu-baseline" \
  "$PYTHON" -m pytest -m gpu -v -rs --junitxml="$OUT/pytest-gpu.xml" \
  --benchmark-enable --benchmark-json="$OUT/pytest-benchmark.json"
bounded sweep-vgg8 3600 "${membench[@]}" sweep --device cuda --arch vgg8 --res 32 --batch 64,128 \
  --method bp,bp-accum,bp-ckpt,ff-pipelined,ff-naive --warmup 5 --steps 20 --timeout 600 --out "$OUT/results/vgg8-r32"
bounded sweep-vgg11 3600 "${membench[@]}" sweep --device cuda --arch vgg11 --res 224 --batch 32 \
  --method bp,bp-accum,bp-ckpt,ff-pipelined,ff-naive --warmup 5 --steps 20 --timeout 600 --out "$OUT/results/vgg11-r224"
# Estimates of the same cells on the calibrated card, beside the measured rows: each term of the
# device total (context, workspace, reserve slack) against its measurement.
bounded estimate-vgg11 900 "${membench[@]}" sweep --estimate --device-profile "$OUT/profiles/calibrated.toml" \
  --arch vgg11 --res 224 --batch 32 --method bp,bp-accum,bp-ckpt,ff-pipelined,ff-naive \
  --cudnn-benchmark off,on --out "$OUT/results/vgg11-r224-estimate"
bounded sweep-vgg11-terms 3600 "${membench[@]}" sweep --device cuda --arch vgg11 --res 224 --batch 32 \
  --method bp --cudnn-benchmark off,on --alloc-conf "default;expandable_segments:True" \
  --warmup 5 --steps 10 --timeout 600 --out "$OUT/results/vgg11-r224-terms"
bounded report 900 "${membench[@]}" report "$OUT/results" --out "$OUT/report"

log "=== summary"
failed=0
while IFS=$'\t' read -r name rc; do
  if [ "$rc" = 0 ]; then status=ok; else status="FAILED (exit $rc)"; failed=$((failed + 1)); fi
  log "$(printf '%-12s %s' "$name" "$status")"
done < "$CODES"
for csv in "$OUT"/results/*/cells.csv; do
  [ -f "$csv" ] || continue
  log "$csv: $(tail -n +2 "$csv" | wc -l) cell(s), statuses: $(
    timeout 120 "$PYTHON" -c "import pandas as pd, sys; print(pd.read_csv(sys.argv[1])['status'].value_counts().to_dict())" "$csv" 2>/dev/null)"
done
log "$failed step(s) failed; everything is in $OUT (log: $LOG)"
[ "$failed" = 0 ]
