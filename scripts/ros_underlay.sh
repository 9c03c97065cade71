#!/usr/bin/env bash
# Build the ROS 2 tools that no package registry carries -- `ros2 launch`, `ros2 topic echo`, `ros2 param`,
# launch_testing (+ launch_testing_ament_cmake, launch_testing_ros), vision_msgs, ... -- from their upstream
# sources in ../shared/ros2 (see its README) into an underlay workspace, once, against the venv's ROS 2 wheels.
#
#   scripts/ros_underlay.sh [VENV]            # VENV defaults to .venv; prints the underlay's setup file or nothing
#
# The underlay lives in VENV/ros2_underlay/ (ignored with the venv) and is rebuilt only when its sources change:
# VENV/ros2_underlay/.stamp holds a hash of the source tree listing (paths, sizes, mtimes), the venv's Python and
# the build recipe's version (RECIPE below). Concurrent callers (make demo beside make test) wait for one another (flock).
#
# Environment knobs:
#   AGEGENDER_ROS2_SRC=../shared/ros2      the sources; when the folder does not exist nothing is built (a ROS 2
#                                          installation, if sourced, provides the tools; else tests that need
#                                          them skip and the demo uses its fallback)
#   AGEGENDER_ROS2_UNDERLAY=VENV/ros2_underlay   where to build
# Output: on success the last line of stdout is the path of the underlay's local_setup.bash ("" when none).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
VENV="${1:-${AGEGENDER_VENV:-.venv}}"
VENV="$(cd "$VENV" && pwd)"
SRC="${AGEGENDER_ROS2_SRC:-$REPO/../shared/ros2}"
DEST="${AGEGENDER_ROS2_UNDERLAY:-$VENV/ros2_underlay}"

if [[ ! -d "$SRC" ]]; then
  echo "ros_underlay.sh: no $SRC: using the ROS 2 tools of the environment, if any" >&2
  echo ""
  exit 0
fi
SRC="$(cd "$SRC" && pwd)"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
touch "$DEST/COLCON_IGNORE"  # never crawled by a colcon run of the repository

# Bump when the way the underlay is built changes (part of the stamp: a change rebuilds it).
RECIPE=1

stamp_of() {
  {
    echo "python: $VENV/bin/python"
    echo "recipe: $RECIPE"
    (cd "$SRC" && find . -path '*/__pycache__' -prune -o -type f -printf '%P %s %T@\n' | LC_ALL=C sort)
  } | sha256sum | cut -d' ' -f1
}

exec 9>"$DEST/.lock"
flock 9
want="$(stamp_of)"
if [[ -f "$DEST/.stamp" && "$(cat "$DEST/.stamp")" == "$want" && -f "$DEST/install/local_setup.bash" ]]; then
  echo "ros_underlay.sh: $DEST is up to date with $SRC" >&2
  echo "$DEST/install/local_setup.bash"
  exit 0
fi

# colcon's output (a few hundred lines, with setuptools' deprecation warnings per package) goes to a log file,
# shown only when the build fails.
LOG="$DEST/build.log"
echo "ros_underlay.sh: building the ROS 2 tools from $SRC into $DEST (once; about 2-4 minutes; log: $LOG)" >&2
rm -rf "$DEST/build" "$DEST/install" "$DEST/log" "$DEST/.stamp"
set +u
# shellcheck disable=SC1091
source "$VENV/ros_env.sh"
set -u
t0=$SECONDS
# Sequential: on a 2-core machine parallel CMake jobs of the two message packages only thrash.
if ! colcon --log-base "$DEST/log" build --base-paths "$SRC" --build-base "$DEST/build" \
    --install-base "$DEST/install" --executor sequential \
    --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >"$LOG" 2>&1; then
  cat "$LOG" >&2
  echo "ros_underlay.sh: FAILED to build $SRC (colcon's output above and in $LOG; per package: $DEST/log/latest_build)" >&2
  exit 1
fi
# launch_testing and launch_testing_ros register pytest plugins whose hooks (Jazzy) declare the `path` argument
# that pytest >= 8.1 no longer passes: with them on PYTHONPATH every pytest run (this package's suite included)
# stops at start-up with PluginValidationError. The launch tests run through `launch_test` (add_launch_test in
# CMakeLists.txt), which does not need them, so the underlay does not register them.
for ep in "$DEST"/install/launch_testing*/lib/python*/site-packages/*.egg-info/entry_points.txt; do
  [[ -f "$ep" ]] || continue
  "$VENV/bin/python" - "$ep" <<'PYEOF' 2>>"$LOG"
import configparser
import sys

path = sys.argv[1]
parser = configparser.ConfigParser(interpolation=None)
parser.optionxform = str
parser.read(path)
if parser.remove_section("pytest11"):
    with open(path, "w") as f:
        parser.write(f)
    print(f"ros_underlay.sh: removed the pytest11 entry point of {path}", file=sys.stderr)
PYEOF
done
echo "$want" > "$DEST/.stamp"
echo "ros_underlay.sh: built $(grep -c '^Finished <<<' "$LOG") packages in $((SECONDS - t0)) s (log: $LOG)" >&2
echo "$DEST/install/local_setup.bash"
