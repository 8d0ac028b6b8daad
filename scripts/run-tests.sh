#!/usr/bin/env bash
# Runs the whole suite: lint and types first (seconds), then pytest.
# Pytest's exit code 5 (no tests collected) is a failure, like any other.
#
# Without arguments the suite runs as two pytest processes at once, one per half (`--shard ceph` and
# `--shard other`, see tests/conftest.py): most of it waits on subprocesses, proxies and servers rather than
# on the CPU, and the halves share no session fixture (only the `ceph` half starts Ceph clusters). The
# `other` half prints as it goes; the `ceph` half's output follows when both are done. MPUPLOAD_TEST_SHARDS=1
# runs the suite as a single process instead; arguments (extra pytest options, as before) do too.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p artifacts
export MPUPLOAD_ARTIFACTS_DIR="${MPUPLOAD_ARTIFACTS_DIR:-$PWD/artifacts}"  # screenshots and other test artifacts
# The suite starts the CLI, servers and workers as processes hundreds of times: each would compile mpupload's
# modules again where the environment forbids caching bytecode (some CI images set PYTHONDONTWRITEBYTECODE).
# Cache it, as an installed package does; compile it once here so the two halves do not race to write it.
unset PYTHONDONTWRITEBYTECODE
.venv/bin/python -m compileall -q mpupload tests benchmarks >/dev/null || exit 1
.venv/bin/python -m ruff check mpupload tests benchmarks || exit 1
.venv/bin/python -m mypy || exit 1

PYTEST=(.venv/bin/python -m pytest tests -p no:cacheprovider --durations=15)

check_rc() {  # check_rc NAME RC: 0 when RC is a pass; pytest's "no tests collected" (5) is a failure
  if [ "$2" -eq 5 ]; then
    echo "error: pytest ($1) collected no tests" >&2
    return 1
  fi
  return "$2"
}

if [ $# -gt 0 ] || [ "${MPUPLOAD_TEST_SHARDS:-2}" = 1 ]; then
  "${PYTEST[@]}" "$@"
  check_rc pytest $?
  exit $?
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/mpupload-tests.XXXXXX")
started=$SECONDS
"${PYTEST[@]}" --shard ceph --basetemp "$work/ceph" >"$work/ceph.log" 2>&1 &
ceph_pid=$!
trap 'kill -TERM "$ceph_pid" 2>/dev/null; exit 130' INT TERM
"${PYTEST[@]}" --shard other --basetemp "$work/other" 2>&1 | tee "$work/other.log"
other_rc=${PIPESTATUS[0]}
wait "$ceph_pid"
ceph_rc=$?
trap - INT TERM
echo
echo "=============================== pytest --shard ceph ================================"
cat "$work/ceph.log"
echo
rc=0
check_rc "--shard other" "$other_rc" || rc=1
check_rc "--shard ceph" "$ceph_rc" || rc=1
# one closing line for both halves, from their own closing lines
count() {  # count WORD: the sum of "N WORD" over both halves' closing lines
  tail -n 1 -q "$work/other.log" "$work/ceph.log" | grep -oE "[0-9]+ $1\b" | awk '{n += $1} END {print n + 0}'
}
echo "both halves done in $((SECONDS - started)) s (exit codes: other $other_rc, ceph $ceph_rc)"
echo "pytest: $(count passed) passed, $(( $(count failed) + $(count errors?) )) failed, $(count skipped) skipped"
if [ $rc -eq 0 ]; then
  rm -rf "$work"
else
  echo "the halves' logs and temporary directories are kept in $work" >&2
fi
exit $rc
