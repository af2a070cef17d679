#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check/README.md says what to carry and what it prints).
#
# Five phases, each a process of its own under `timeout`, so that a failure or a hang in one is
# recorded and the next still runs; each prints its rows as it finishes them, and one table
# closes the run. It runs from the source tree (PYTHONPATH=src) and needs no network.
#
# Time budget: under 5 minutes on one H100 or H200 (the machine is lent for 15 minutes in all,
# its start-up included). The per-phase limits below add up to 285 s; a phase cut off at its
# limit reports TIMEOUT with the rows it printed so far.
#
# Usage: bash benchmarks/gpu_check.sh      (PYTHON=/path/to/python to choose the interpreter)
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
GPU_CHECK_DIR=${GPU_CHECK_DIR:-$(mktemp -d -t gpu-check-XXXXXX)}
export GPU_CHECK_DIR
# No network: fail at once instead of waiting on the hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

# name  seconds  script (under benchmarks/gpu_check/)
PHASES=(
  "smoke 30 smoke.py"             # versions, import, platform line, Triton attention vs torch
  "tests 90 gpu_tests.py"         # every @pytest.mark.gpu test
  "parity 45 parity.py"           # greedy parity with transformers, six tiny architectures
  "decode 35 decode.py"           # Llama 3.1 8B shape, batch-1 decode vs the HBM bound
  "throughput 85 throughput.py"   # 256 x 512 -> 256 offline, against transformers' generate
)

for phase in "${PHASES[@]}"; do
  read -r name budget script <<<"$phase"
  echo
  echo "== $name (at most ${budget} s; its log: $GPU_CHECK_DIR/$name.log)"
  start=$(date +%s.%N)
  # stderr (engine logs, tracebacks) goes to the phase's log; the rows go to stdout.
  timeout --kill-after=10 "$budget" "$PYTHON" "benchmarks/gpu_check/$script" 2>"$GPU_CHECK_DIR/$name.log"
  status=$?
  end=$(date +%s.%N)
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$budget" "$start" "$end" >>"$GPU_CHECK_DIR/phases.tsv"
  if [ "$status" -ne 0 ]; then
    echo "-- $name exited with $status; the end of its log:"
    tail -n 15 "$GPU_CHECK_DIR/$name.log"
  fi
done

"$PYTHON" benchmarks/gpu_check/summary.py
