#!/usr/bin/env bash
# Sets up .venv with the test dependencies and runs the whole test suite (CPU, 8 fake devices).
# Extra arguments go to pytest, e.g. ./launch/test.sh tests/test_models.py -k bf16
set -uo pipefail
cd "$(dirname "$0")/.."
./launch/setup_env.sh test || exit 1
.venv/bin/python -m pytest -q -n 2 --durations=15 "$@" tests
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests: treated as a failure" >&2; exit 1; fi
exit $rc
