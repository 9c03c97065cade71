# shellcheck shell=bash
# Turn the current bash shell into one where this repository's ROS 2 package and the ROS 2 tools work:
#
#   source scripts/ros_shell.sh          (after `make demo` or `make test`, from the repository root or anywhere)
#   ros2 launch agegender_ros nano.launch.py &
#   ros2 topic echo /agegender/detections
#   ros2 param describe /agegender_node detector
#
# It sources, in order: the venv's ROS 2 Jazzy wheels (.venv/ros_env.sh, scripts/ros_setup.sh), the ROS 2 tools
# built from ../shared/ros2 (.venv/ros2_underlay, scripts/ros_underlay.sh) when they were built, and the
# package's colcon install space (install/). On a machine with a ROS 2 installation you would instead
# `source /opt/ros/<distro>/setup.bash` and `source install/setup.bash` of your workspace.
# It also exports the package's Fast DDS shared-memory profile (FASTRTPS_/FASTDDS_DEFAULT_PROFILES_FILE) unless one
# is set, so that a camera publisher started from this shell delivers full-size raw frames to the node.
# DDS discovery stays on this host (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST); `scripts/netns_run.sh bash` first
# gives a shell whose DDS traffic cannot leave loopback at all (what `make demo` and `make test` use).
# Environment knobs: AGEGENDER_VENV (default .venv), AGEGENDER_INSTALL_BASE (default install).
if [ -z "${BASH_VERSION:-}" ] || [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "ros_shell.sh: source it from bash: source scripts/ros_shell.sh" >&2
  exit 1 2>/dev/null || return 1
fi
_agegender_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_agegender_venv="${AGEGENDER_VENV:-$_agegender_repo/.venv}"
_agegender_install="${AGEGENDER_INSTALL_BASE:-$_agegender_repo/install}"
case "$_agegender_venv" in /*) ;; *) _agegender_venv="$_agegender_repo/$_agegender_venv" ;; esac
case "$_agegender_install" in /*) ;; *) _agegender_install="$_agegender_repo/$_agegender_install" ;; esac
if [ ! -f "$_agegender_venv/ros_env.sh" ]; then
  echo "ros_shell.sh: $_agegender_venv/ros_env.sh is missing: run \`make demo\` (or \`make test\`) first" >&2
  unset _agegender_repo _agegender_venv _agegender_install
  return 1
fi
# The setup files read unset variables; keep the caller's `set -u` as it was.
case $- in *u*) _agegender_nounset=1; set +u ;; *) _agegender_nounset=0 ;; esac
# shellcheck disable=SC1091
. "$_agegender_venv/ros_env.sh"
if [ -f "$_agegender_venv/ros2_underlay/install/local_setup.bash" ]; then
  # shellcheck disable=SC1091
  . "$_agegender_venv/ros2_underlay/install/local_setup.bash"
elif ! command -v ros2 >/dev/null 2>&1; then
  echo "ros_shell.sh: note: no \`ros2\` command (../shared/ros2 not built, no ROS 2 installation sourced)" >&2
fi
if [ -f "$_agegender_install/local_setup.bash" ]; then
  # shellcheck disable=SC1091
  . "$_agegender_install/local_setup.bash"
else
  echo "ros_shell.sh: note: $_agegender_install is not built yet (\`make demo\` or \`make build\`)" >&2
fi
# Full-size raw frames between processes: a camera driver started from this shell must use the same Fast DDS
# shared-memory profile as the node (nano.launch.py gives it to the processes it starts), else most 640x480 frames
# are lost as UDP fragments (docs/ros.md#large-raw-images-between-processes-fast-dds). Exported for every process
# of this shell when the RMW is Fast DDS and no profile of the user's own is set; the profile keeps UDP, so
# processes without it still talk to these.
_agegender_profile="$_agegender_install/agegender_ros/share/agegender_ros/config/fastdds_large_shm.xml"
[ -f "$_agegender_profile" ] || _agegender_profile="$_agegender_repo/config/fastdds_large_shm.xml"
case "${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}" in
  rmw_fastrtps_cpp|rmw_fastrtps_dynamic_cpp)
    if [ -z "${FASTRTPS_DEFAULT_PROFILES_FILE:-}" ] && [ -z "${FASTDDS_DEFAULT_PROFILES_FILE:-}" ]; then
      export FASTRTPS_DEFAULT_PROFILES_FILE="$_agegender_profile"
      export FASTDDS_DEFAULT_PROFILES_FILE="$_agegender_profile"
    fi ;;
esac
[ "$_agegender_nounset" = 1 ] && set -u
unset _agegender_repo _agegender_venv _agegender_install _agegender_nounset _agegender_profile
