#!/usr/bin/env bash
# Sets up (cheap when already done) and runs the test suite; extra arguments go to pytest
# (e.g. -m unit). Two pytest-xdist workers, whole files to a worker (module fixtures such
# as a running node stay shared); VLM_GRASP_LOCATOR_TEST_WORKERS changes the count.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
. "$ROOT/scripts/env.sh"
cd "$ROOT"
exec python -m pytest test -q -rs -n "${VLM_GRASP_LOCATOR_TEST_WORKERS:-2}" --dist loadfile "$@"
