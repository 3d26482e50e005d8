#!/usr/bin/env bash
# Nightly performance run for a bare-metal runner (also runnable by hand):
# benchmark the previous commit (A) and this one (B) side by side on the same
# host, compare them statistically (ci/ab_compare.py), append both to a JSON
# history and render an HTML report with the plots (ci/history.py).
#
# Both sides run the same QEMU binary (exported as LIGHTVM_QEMU, which
# lightvm/qemubin.py honours for every machine type): this tree's slim build
# (qemu/build/current) when it is built, else Debian's. A left alone would pick
# its own (unbuilt: Debian's, ~10 ms slower to start) and the A/B would measure
# the binary, not the commit; ab_compare.py refuses a qemu_version mismatch.
#
#   ci/nightly.sh                       # KVM, every suite, N = 1,10,100
#   ACCEL=tcg VMS=1,10 ci/nightly.sh    # by hand on a host without usable KVM
#   SUITES=split ACCEL=tcg SPLIT_VMS=1,2 ITERATIONS=3 ci/nightly.sh   # a quick check
#
# Environment (defaults):
#   SUITES="boot density net checkpoint split"  VMS=1,10,100  ITERATIONS=10  ACCEL=kvm
#   SPLIT_VMS=1,10  SPLIT_IDLE_WINDOW=5 (split: N running VMs, idle sampling seconds;
#     the 1,000-VM scale bar is a manual run, lightvm/bench/README.md)
#   QEMU=<path> (default: qemu/build/current/qemu-system-x86_64 if built, else Debian's)
#   BASE=HEAD~1 (the A side; skipped when it has no lightvm/bench)
#   OUT=ci-results/<UTC timestamp>   HISTORY=ci-results/history.jsonl
#   PYTHON=.venv/bin/python (must have the bench deps: matplotlib, libvirt-python)
#   FUZZ_EXAMPLES=5000 (examples per fuzzer of the long fuzz run; 0 skips it)
# Exit status: 0, or 1 when a suite failed or ab_compare flagged a regression.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

SUITES=${SUITES:-"boot density net checkpoint split"}
VMS=${VMS:-1,10,100}
SPLIT_VMS=${SPLIT_VMS:-1,10}
SPLIT_IDLE_WINDOW=${SPLIT_IDLE_WINDOW:-5}
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

# One QEMU for both sides, resolved once (symlinks resolved: it names the exact build).
if [[ -z ${QEMU:-} ]]; then
    if [[ -x $REPO/qemu/build/current/qemu-system-x86_64 ]]; then
        QEMU=$(readlink -f "$REPO/qemu/build/current/qemu-system-x86_64")
    else
        QEMU=$(command -v qemu-system-x86_64 || true)
    fi
fi
if [[ -z $QEMU || ! -x $QEMU ]]; then
    echo "nightly: no QEMU binary (${QEMU:-none}): build qemu/ or install qemu-system-x86" >&2
    exit 1
fi
export LIGHTVM_QEMU=$QEMU
qemu_version=$(timeout 20 "$QEMU" --version | head -n1 || true)
echo "nightly: QEMU for A and B: $QEMU ($qemu_version)" | tee "$OUT/qemu.txt"

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

suite_args() { # suite: its options
    case $1 in
    split) echo --vms "$SPLIT_VMS" --idle-window "$SPLIT_IDLE_WINDOW" ;;
    *) echo --vms "$VMS" ;;
    esac
}

run_suite() { # tree label suite
    local tree=$1 label=$2 suite=$3
    local -a args
    read -r -a args <<<"$(suite_args "$suite")"
    echo "nightly: $suite @ $label ($(git -C "$tree" describe --always --dirty), LIGHTVM_QEMU=$LIGHTVM_QEMU)"
    (cd "$tree" && PYTHONPATH="$tree" timeout "$SUITE_TIMEOUT" "$PYTHON" -m lightvm.bench.cli "$suite" \
        "${args[@]}" --iterations "$ITERATIONS" --accel "$ACCEL" --max-vms 100000 --out "$OUT/$label-$suite")
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
# The fuzzers' long run (tests/unit/fuzzlib.py): FUZZ_EXAMPLES examples each, random seeds.
if [[ ${FUZZ_EXAMPLES:-5000} != 0 ]]; then
    echo "nightly: fuzzers, ${FUZZ_EXAMPLES:-5000} examples each"
    LIGHTVM_FUZZ_EXAMPLES=${FUZZ_EXAMPLES:-5000} timeout "$SUITE_TIMEOUT" "$PYTHON" -m pytest -q -p no:cacheprovider \
        tests/unit/test_fuzz_*.py >"$OUT/fuzz.txt" 2>&1 || { echo "nightly: fuzzers failed ($OUT/fuzz.txt)"; status=1; }
fi
"$PYTHON" ci/history.py report "$HISTORY" "$OUT/report" "${runs[@]}" "${abs[@]}"
echo "nightly: report $OUT/report/index.html (status $status)"
exit $status
