#!/usr/bin/env bash
# Nightly performance run for a bare-metal runner (also runnable by hand):
# benchmark the previous commit (A) and this one (B) side by side on the same
# host, compare them statistically (ci/ab_compare.py), append both to a JSON
# history and render an HTML report with the plots (ci/history.py).
#
#   ci/nightly.sh                       # KVM, every suite, N = 1,10,100
#   ACCEL=tcg VMS=1,10 ci/nightly.sh    # by hand on a host without usable KVM
#
# Environment (defaults):
#   SUITES="boot density net checkpoint"  VMS=1,10,100  ITERATIONS=10  ACCEL=kvm
#   BASE=HEAD~1 (the A side; skipped when it has no lightvm/bench)
#   OUT=ci-results/<UTC timestamp>   HISTORY=ci-results/history.jsonl
#   PYTHON=.venv/bin/python (must have the bench deps: matplotlib, libvirt-python)
# Exit status: 0, or 1 when a suite failed or ab_compare flagged a regression.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

SUITES=${SUITES:-"boot density net checkpoint"}
VMS=${VMS:-1,10,100}
ITERATIONS=${ITERATIONS:-10}
ACCEL=${ACCEL:-kvm}
BASE=${BASE:-HEAD~1}
OUT=${OUT:-ci-results/$(date -u +%Y%m%d-%H%M%S)}
HISTORY=${HISTORY:-ci-results/history.jsonl}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-3600}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
status=0

# The A side: a detached worktree of BASE with its own guest images.
base_dir=""
cleanup() {
    if [[ -n $base_dir ]]; then
        git -C "$REPO" worktree remove --force "$base_dir" >/dev/null 2>&1 || rm -rf "$base_dir"
    fi
}
trap cleanup EXIT
if git rev-parse --verify -q "$BASE^{commit}" >/dev/null; then
    base_dir=$(mktemp -d /tmp/lightvm-nightly-base-XXXXXX)
    rmdir "$base_dir"
    git worktree add --detach -q "$base_dir" "$BASE"
    if [[ -d $base_dir/lightvm/bench ]]; then
        timeout 900 make -C "$base_dir/images" -s -j"$(nproc)"
    else
        echo "nightly: $BASE has no lightvm/bench: no A side this time"
        cleanup
        base_dir=""
    fi
else
    echo "nightly: no $BASE commit: no A side this time"
fi
timeout 900 make -C "$REPO/images" -s -j"$(nproc)"

run_suite() { # tree label suite
    local tree=$1 label=$2 suite=$3
    echo "nightly: $suite @ $label ($(git -C "$tree" describe --always --dirty))"
    (cd "$tree" && PYTHONPATH="$tree" timeout "$SUITE_TIMEOUT" "$PYTHON" -m lightvm.bench.cli "$suite" \
        --vms "$VMS" --iterations "$ITERATIONS" --accel "$ACCEL" --max-vms 100000 --out "$OUT/$label-$suite")
}

runs=()
abs=()
for suite in $SUITES; do
    # A then B, back to back on the same host: the comparison never uses a stored number.
    if [[ -n $base_dir ]]; then
        run_suite "$base_dir" A "$suite" || { echo "nightly: $suite failed at A ($BASE)"; }
    fi
    run_suite "$REPO" B "$suite" || { echo "nightly: $suite failed at B"; status=1; }
    [[ -f $OUT/B-$suite/results.json ]] && runs+=("--run" "$OUT/B-$suite")
    if [[ -f $OUT/A-$suite/results.json && -f $OUT/B-$suite/results.json ]]; then
        "$PYTHON" ci/ab_compare.py "$OUT/A-$suite/results.json" "$OUT/B-$suite/results.json" \
            --json "$OUT/ab-$suite.json" | tee "$OUT/ab-$suite.txt" || status=1
        abs+=("--ab" "$OUT/ab-$suite.txt")
    fi
    if [[ -f $OUT/B-$suite/results.json ]]; then
        "$PYTHON" ci/history.py append "$HISTORY" "$OUT/B-$suite/results.json"
    fi
done
"$PYTHON" ci/history.py report "$HISTORY" "$OUT/report" "${runs[@]}" "${abs[@]}"
echo "nightly: report $OUT/report/index.html (status $status)"
exit $status
