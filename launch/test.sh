#!/usr/bin/env bash
# Sets up .venv-test with the test dependencies and runs the test suite (CPU, 8 fake devices).
# Extra arguments go to pytest; paths among them run just those (default: all of tests/), e.g.
#   ./launch/test.sh tests/test_models.py -k bf16
set -uo pipefail
cd "$(dirname "$0")/.."
./launch/setup_env.sh test || exit 1
targets=(tests)
for arg in "$@"; do
  [ -e "${arg%%::*}" ] && targets=()  # a path (or path::test) was given: run that, not the whole suite
done
.venv-test/bin/python -m pytest -q -n 2 --durations=15 "$@" "${targets[@]}"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests: treated as a failure" >&2; exit 1; fi
exit $rc
