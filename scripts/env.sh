# Source this file (". scripts/env.sh") after scripts/setup.sh: it activates the
# venv and puts the ROS 2 wheels and this repository's colcon workspace on the
# environment. It never exits the calling shell.

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "env.sh must be sourced: . scripts/env.sh" >&2
  exit 1
fi
_vgl_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

_vgl_prepend() {  # _vgl_prepend VAR DIR: put DIR first in VAR unless already there
  case ":${!1:-}:" in
    *":$2:"*) ;;
    *) export "$1=$2${!1:+:${!1}}" ;;
  esac
}

_vgl_env() {
  if [ ! -f "$_vgl_root/.venv/bin/activate" ]; then
    echo "env.sh: no venv at $_vgl_root/.venv; run scripts/setup.sh first" >&2
    return 1
  fi
  # The venv and colcon setup scripts read unset variables; relax nounset
  # while they run if the caller has it on.
  local nounset=0
  case $- in *u*) nounset=1; set +u ;; esac

  . "$_vgl_root/.venv/bin/activate"
  _vgl_prepend AMENT_PREFIX_PATH "$VIRTUAL_ENV"
  _vgl_prepend CMAKE_PREFIX_PATH "$VIRTUAL_ENV"
  if [ -f "$_vgl_root/install/local_setup.bash" ]; then
    . "$_vgl_root/install/local_setup.bash"
  else
    echo "env.sh: $_vgl_root/install missing; run scripts/setup.sh to build the messages" >&2
  fi
  export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}

  [ "$nounset" = 1 ] && set -u
  return 0
}

if _vgl_env; then _vgl_status=0; else _vgl_status=$?; fi
unset -f _vgl_env _vgl_prepend
unset _vgl_root
return "$_vgl_status"
