#!/usr/bin/env bash
# Runs the whole suite: lint and types first (seconds), then pytest.
# Pytest's exit code 5 (no tests collected) is a failure, like any other.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p artifacts
export MPUPLOAD_ARTIFACTS_DIR="${MPUPLOAD_ARTIFACTS_DIR:-$PWD/artifacts}"  # screenshots and other test artifacts
.venv/bin/python -m ruff check mpupload tests benchmarks || exit 1
.venv/bin/python -m mypy || exit 1
.venv/bin/python -m pytest tests -p no:cacheprovider --durations=15 "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc
