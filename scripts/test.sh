#!/usr/bin/env bash
# The README's test command: set everything up, then lint, type-check and run
# every test (unit, root, functional: real guests under TCG). Extra arguments
# go to pytest (e.g. scripts/test.sh tests/unit -k spec).
#
# A skipped test is a failure here unless tests/skip-allowlist.txt allows it
# (CI runs this as root, where nothing needs to skip), and so is a run that
# collected no test (pytest's exit status 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# The Tinyx platform kernel the Linux-guest tests boot: cached by content hash under
# tinyx/build (a no-op when built; ~5 min on a fresh 2-core machine). Here, not in
# bootstrap: booting a unikernel (the README's first command) does not need it.
echo "== tinyx kernel (python -m tinyx.kernel.build)"
timeout 3000 .venv/bin/python -m tinyx.kernel.build >/dev/null
# ... and the kernel of each app the trimming loop left a config for (tinyx/kconfig/APP.config,
# what `lightvm image build APP` boots: docs/tinyx-size.md, "The kernel trimming loop").
for config in tinyx/kconfig/*.config; do
    [ "$config" = tinyx/kconfig/qemu-microvm.config ] && continue
    echo "== tinyx kernel for $(basename "$config" .config) (python -m tinyx.kernel.build --fragment $config)"
    timeout 3000 .venv/bin/python -m tinyx.kernel.build --fragment "$config" >/dev/null
done

echo "== lint (ruff)"
.venv/bin/ruff check lightvm tinyx tests tools images
echo "== types (mypy --strict on lightvm/)"
.venv/bin/mypy
echo "== tests (pytest)"
skips="$(mktemp)"
trap 'rm -f "$skips"' EXIT
rc=0
LIGHTVM_TEST_SKIPS="$skips" .venv/bin/python -m pytest "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "test.sh: pytest collected no tests: that is a failure, not a pass" >&2
    exit 1
fi
# tests/conftest.py wrote one "NODEID<TAB>REASON" line per skip.
skip_rc=0
.venv/bin/python - "$skips" tests/skip-allowlist.txt <<'PY' || skip_rc=$?
import fnmatch
import sys

skipped = [line.rstrip("\n").split("\t", 1) for line in open(sys.argv[1], encoding="utf-8") if line.strip()]
allowed = []
for number, line in enumerate(open(sys.argv[2], encoding="utf-8"), 1):
    if line.strip() and not line.lstrip().startswith("#"):
        fields = line.split(None, 1)
        if len(fields) < 2:
            sys.exit(f"{sys.argv[2]}:{number}: a pattern needs a reason: {line.strip()}")
        allowed.append(fields[0])
bad = [(nodeid, reason) for nodeid, reason in skipped if not any(fnmatch.fnmatchcase(nodeid, p) for p in allowed)]
for nodeid, reason in bad:
    print(f"test.sh: skipped, and not in {sys.argv[2]}: {nodeid}: {reason}", file=sys.stderr)
if bad:
    sys.exit(f"test.sh: {len(bad)} test(s) skipped: a skip is a check that did not run (run as root?)")
PY
if [[ $rc -eq 0 && $skip_rc -ne 0 ]]; then
    rc=1
fi
exit "$rc"
