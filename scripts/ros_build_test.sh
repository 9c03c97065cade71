#!/usr/bin/env bash
# Build this repository as the ament_cmake package `agegender_ros` with colcon and run its tests
# (the pytest suite in test/, registered with ament_add_pytest_test) in a private network namespace.
#
#   scripts/ros_build_test.sh [PYTEST ARGS...]     e.g.  scripts/ros_build_test.sh -k messages
#
# Extra arguments reach pytest through PYTEST_ADDOPTS (which ament_cmake_pytest's runner inherits).
# Environment knobs:
#   AGEGENDER_VENV=.venv             the venv prepared by scripts/ros_setup.sh (run here if needed)
#   AGEGENDER_TEST_TIMEOUT=1800      hard limit (s) for `colcon test`, killed with SIGKILL after it
#   AGEGENDER_SKIP_BUILD=1           only test what is already built
# Exit status: non-zero when the build fails or any test fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
VENV="${AGEGENDER_VENV:-.venv}"

if [[ ! -f "$VENV/ros_env.sh" ]] || ! "$VENV/bin/python" -c 'import rclpy, colcon_core' >/dev/null 2>&1; then
  bash scripts/ros_setup.sh "$VENV"
fi
touch "$VENV/COLCON_IGNORE"  # never crawl the venv

set +u  # the ROS / colcon setup scripts read unset variables
# shellcheck disable=SC1090,SC1091
source "$VENV/ros_env.sh"
set -u

if [[ $# -gt 0 ]]; then
  extra="$(printf '%q ' "$@")"
  export PYTEST_ADDOPTS="${PYTEST_ADDOPTS:+$PYTEST_ADDOPTS }$extra"
fi

# The repository root is the package: --base-paths . finds exactly it (colcon does not descend into a
# folder that is itself a package, and .venv/build/install/log carry COLCON_IGNORE).
COLCON_ARGS=(--base-paths . --build-base build --install-base install)

if [[ "${AGEGENDER_SKIP_BUILD:-0}" != 1 ]]; then
  t0=$SECONDS
  colcon build "${COLCON_ARGS[@]}" \
    --cmake-args -DPython3_EXECUTABLE="$(cd "$VENV" && pwd)/bin/python" -DBUILD_TESTING=ON
  echo "ros_build_test.sh: colcon build took $((SECONDS - t0)) s"
fi

set +u
# shellcheck disable=SC1091
source install/setup.bash
set -u

t0=$SECONDS
rc=0
scripts/netns_run.sh timeout -s KILL "${AGEGENDER_TEST_TIMEOUT:-1800}" \
  colcon test "${COLCON_ARGS[@]}" --return-code-on-test-failure --event-handlers console_direct+ || rc=$?
echo "ros_build_test.sh: colcon test took $((SECONDS - t0)) s (exit $rc)"

colcon test-result --test-result-base build --verbose || rc=$((rc ? rc : 1))
if [[ $rc -ne 0 ]]; then
  echo "ros_build_test.sh: FAILED (exit $rc); pytest output: $REPO/build/agegender_ros/ament_cmake_pytest/pytest.txt" >&2
fi
exit $rc
