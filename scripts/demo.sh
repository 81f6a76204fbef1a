#!/usr/bin/env bash
# Sets up (cheap when already done) and runs the demo; arguments go to vlm_grasp_locator.tools.demo.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
. "$ROOT/scripts/env.sh"
exec python -m vlm_grasp_locator.tools.demo "$@"
