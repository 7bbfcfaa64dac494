#!/usr/bin/env bash
# Run the test suite on a loaded machine: the README's test command
# (`python -m pytest`) while CPU hogs keep every core busy, N times in a row.
#
#   tests/under_load.sh [N] [PYTEST ARGS...]    N runs (default 3); exits non-zero if any run failed
#
#   tests/under_load.sh                          # three full runs under load
#   tests/under_load.sh 1 -q -p no:cacheprovider # one run, quiet, no .pytest_cache
#   tests/under_load.sh 2 tests/test_verify_rebalance.py
#
# Why: CI machines are shared. A test that counts work done against the wall
# clock measures the machine, not dhtcart; this script is how such a test is
# found before CI finds it. Each run starts HOGS processes (default 2, the
# cores of the CI machines; UNDER_LOAD_HOGS=N to change) that spin at 100% of
# a core. The hogs cannot outlive the run: they are killed when pytest ends,
# pass or fail, or when this script is interrupted, and each one also exits
# by itself when its parent (this script) is gone or after UNDER_LOAD_HOG_SECONDS
# (default 3600), so even a `kill -9` of this script leaves nothing spinning.
#
# CI=true is set unless CI is already set, as in .ci/run: a test that would
# skip fails. Each run's output is kept in a log file; the summary at the end
# gives every run's time, exit status and failed tests.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=3
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    runs=$1
    shift
fi
hogs=${UNDER_LOAD_HOGS:-2}
hog_seconds=${UNDER_LOAD_HOG_SECONDS:-3600}
python=${PYTHON:-python}
export CI="${CI:-true}"
logs=$(mktemp -d "${TMPDIR:-/tmp}/dhtcart-under-load.XXXXXX")

# A hog: spin on a core until its parent (this script) is gone or the time is up.
HOG='
import os, sys, time
parent, end = os.getppid(), time.monotonic() + float(sys.argv[1])
while os.getppid() == parent and time.monotonic() < end:
    for _ in range(200_000):
        pass
'

hog_pids=()
stop_hogs() {
    local pid
    for pid in "${hog_pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${hog_pids[@]}"; do
        wait "$pid" 2>/dev/null
    done
    hog_pids=()
}
trap stop_hogs EXIT
trap 'stop_hogs; exit 130' INT
trap 'stop_hogs; exit 143' TERM

summary=()
failed=0
for ((run = 1; run <= runs; run++)); do
    for ((h = 0; h < hogs; h++)); do
        "$python" -c "$HOG" "$hog_seconds" &
        hog_pids+=("$!")
    done
    log="$logs/run-$run.log"
    echo "== under load, run $run of $runs: $hogs CPU hogs, $python -m pytest $* (log: $log)"
    started=$(date +%s)
    "$python" -m pytest "$@" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    seconds=$(($(date +%s) - started))
    stop_hogs
    line="run $run: exit $status in $((seconds / 60))m$((seconds % 60))s"
    if [[ $status -ne 0 ]]; then
        failed=$((failed + 1))
        tests=$(grep -E '^(FAILED|ERROR) ' "$log" | cut -d' ' -f2 | tr '\n' ' ')
        line="$line; failed: ${tests:-see the log}"
    fi
    summary+=("$line")
done

echo "== under load: $((runs - failed)) of $runs runs passed ($hogs CPU hogs on $(nproc) cores; logs in $logs)"
printf '   %s\n' "${summary[@]}"
[[ $failed -eq 0 ]]
