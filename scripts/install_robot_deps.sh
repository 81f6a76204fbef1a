#!/usr/bin/env bash
# Install the pip-only dependencies of vlm_grasp_locator on a robot whose ROS 2 comes
# from apt (Humble, Jazzy, Kilted, Lyrical), with that ROS 2 sourced:
#   torch, torchvision, mobilesam-mirror, open_clip_torch, onnxruntime
# (rosdep installs the rest: `rosdep install --from-paths src -y --ignore-src`).
#
#   scripts/install_robot_deps.sh --workspace ~/ros2_ws [--mode auto|user|venv]
#       [--cpu] [--jetson] [--no-onnx] [--python /usr/bin/python3] [--dry-run]
#
# Where they go (--mode auto):
#   * Python without a PEP 668 marker (Ubuntu 22.04 / Humble): `pip install --user`.
#   * Python with one (Ubuntu 24.04+: Jazzy, Kilted, Lyrical; pip refuses the system
#     Python): a venv <workspace>/venv made with --system-site-packages (so rclpy, the
#     messages and python3-opencv from apt stay visible) and a COLCON_IGNORE inside it
#     (colcon must not crawl it for packages). --mode venv does the same on Humble.
# NumPy is pinned to the system's version: the apt messages' C extensions and
# python3-opencv are built against it, and a NumPy 2 pulled in by pip would shadow it.
#
# Building with the venv (the script prints this at the end): the executables that
# `ros2 run` / launch files start are written by CMakeLists.txt with the shebang
# `#!${Python3_EXECUTABLE}`, the interpreter CMake found at configure time. Build with
#   colcon build --cmake-args -DPython3_EXECUTABLE=<workspace>/venv/bin/python3
# (or activate the venv first: CMake's FindPython3 prefers an active venv) so that
# they run in the venv; a workspace built before needs `rm -rf build/vlm_grasp_locator`.
#
# Jetson (JetPack, /etc/nv_tegra_release): PyPI's aarch64 torch has no CUDA. Install
# NVIDIA's torch wheel for your JetPack first (and a torchvision built for it), as NVIDIA
# documents ("Installing PyTorch for Jetson Platform"); this script then refuses to
# replace them from PyPI and installs the other packages only. PyPI's onnxruntime
# is CPU-only there: use NVIDIA's onnxruntime-gpu wheel for the ONNX backend, or --no-onnx.
#
# --dry-run: checks, creates the venv (with COLCON_IGNORE) and the constraints file, and
# prints the pip commands instead of running them (no downloads).
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install_robot_deps: $*" >&2; exit 1; }

workspace="" mode=auto cpu=0 jetson=auto onnx=1 dry_run=0 python=python3
while [ $# -gt 0 ]; do
  case $1 in
    --workspace) workspace=${2:?--workspace needs a folder}; shift 2 ;;
    --mode) mode=${2:?--mode needs auto, user or venv}; shift 2 ;;
    --python) python=${2:?--python needs an interpreter}; shift 2 ;;
    --cpu) cpu=1; shift ;;
    --jetson) jetson=1; shift ;;
    --no-jetson) jetson=0; shift ;;
    --no-onnx) onnx=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
case $mode in auto|user|venv) ;; *) die "--mode must be auto, user or venv, not '$mode'" ;; esac
[ -n "$workspace" ] || die "--workspace <colcon workspace> is required (the venv goes there)"
mkdir -p "$workspace"
workspace=$(cd "$workspace" && pwd)

[ -n "${ROS_DISTRO:-}" ] || die "no ROS_DISTRO: source /opt/ros/<distro>/setup.bash first"
command -v "$python" >/dev/null || die "no Python interpreter '$python'"
python=$(command -v "$python")
if [ "$dry_run" = 0 ]; then
  "$python" -c "import rclpy" 2>/dev/null \
    || die "$python cannot import rclpy: source /opt/ros/$ROS_DISTRO/setup.bash first"
fi

# Facts about the ROS Python: PEP 668 marker, its NumPy.
stdlib=$("$python" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
externally_managed=0
[ -f "$stdlib/EXTERNALLY-MANAGED" ] && externally_managed=1
numpy_version=$("$python" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)
if [ "$jetson" = auto ]; then
  jetson=0
  [ -f /etc/nv_tegra_release ] && jetson=1
fi
if [ "$mode" = auto ]; then
  mode=user
  [ "$externally_managed" = 1 ] && mode=venv
fi
echo "install_robot_deps: ROS $ROS_DISTRO, $python ($("$python" -V 2>&1)), mode $mode," \
     "PEP 668 marker: $([ "$externally_managed" = 1 ] && echo yes || echo no)," \
     "NumPy ${numpy_version:-none}, Jetson: $([ "$jetson" = 1 ] && echo yes || echo no)"
if [ "$mode" = user ] && [ "$externally_managed" = 1 ]; then
  die "$python is externally managed (PEP 668): pip --user is refused there; use --mode venv"
fi

state=$workspace/.vlm_grasp_locator_deps
mkdir -p "$state"
constraints=$state/constraints.txt
{
  echo "# written by install_robot_deps.sh: keep the system's NumPy (the apt messages use it)"
  [ -n "$numpy_version" ] && echo "numpy==$numpy_version"
} > "$constraints"

if [ "$mode" = venv ]; then
  venv=$workspace/venv
  if [ ! -x "$venv/bin/python3" ]; then
    "$python" -m venv --system-site-packages "$venv" \
      || die "could not create $venv: on Ubuntu, sudo apt install python3-venv"
  fi
  touch "$venv/COLCON_IGNORE"
  pip=("$venv/bin/python3" -m pip install)
  interpreter=$venv/bin/python3
else
  "$python" -m pip --version >/dev/null 2>&1 || [ "$dry_run" = 1 ] \
    || die "no pip for $python: sudo apt install python3-pip"
  pip=("$python" -m pip install --user)
  interpreter=$python
fi
pip+=(-c "$constraints")

packages=(mobilesam-mirror open_clip_torch)
[ "$onnx" = 1 ] && [ "$jetson" = 0 ] && packages+=(onnxruntime)
run() {
  echo "+ $*"
  if [ "$dry_run" = 0 ]; then "$@"; fi
}

if [ "$jetson" = 1 ]; then
  cuda_torch='import sys, torch, torchvision; sys.exit(0 if torch.cuda.is_available() else 1)'
  if [ "$dry_run" = 0 ] && ! "$interpreter" -c "$cuda_torch" 2>/dev/null; then
    die "Jetson: no CUDA-enabled torch and torchvision for $interpreter. Install NVIDIA's
  JetPack torch wheel (and a matching torchvision) first; PyPI's aarch64 torch is CPU-only.
  With --mode venv, install them into $workspace/venv or system-wide (the venv sees both)."
  fi
  echo "install_robot_deps: Jetson: keeping the installed torch/torchvision"
  [ "$onnx" = 1 ] && echo "install_robot_deps: Jetson: for the ONNX backend install" \
      "NVIDIA's onnxruntime-gpu wheel for your JetPack (PyPI's onnxruntime is CPU-only)"
else
  torch_args=(torch torchvision)
  [ "$cpu" = 1 ] && torch_args+=(--index-url https://download.pytorch.org/whl/cpu)
  run "${pip[@]}" "${torch_args[@]}"
fi
run "${pip[@]}" "${packages[@]}"

cat <<EOF

Next: build the workspace so that the node's executables run with $interpreter:
  source /opt/ros/$ROS_DISTRO/setup.bash
  cd $workspace
  rosdep install --from-paths src -y --ignore-src
  colcon build --cmake-args -DPython3_EXECUTABLE=$interpreter
  source install/setup.bash
  ros2 run vlm_grasp_locator grasp_locator_node
EOF
if [ "$mode" = venv ]; then
  echo "(The venv needs no activation at run time: the executables' shebang names it."
  echo " Run the CLI or python -m with $interpreter.)"
fi
if [ "$dry_run" = 1 ]; then
  echo "install_robot_deps: dry run: nothing was downloaded or installed"
fi
