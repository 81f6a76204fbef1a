#!/usr/bin/env bash
# Sets up (cheap when already done) and runs the test suite; extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
. "$ROOT/scripts/env.sh"
cd "$ROOT"
exec python -m pytest test -q -rs "$@"
