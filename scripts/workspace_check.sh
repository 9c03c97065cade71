#!/usr/bin/env bash
# Build and start this package the way an integrator's ROS 2 workspace does (docs/ros.md, "Install in a ROS 2
# workspace"): a copy of the checkout as ws/src/agegender_ros, a plain `colcon build` from ws/, then
# `ros2 launch agegender_ros nano.launch.py` with only ws/install/ sourced. Before the launch ws/src and ws/build
# are deleted, so the launch file, its config and the weights can only come from install/ (the node logs the
# weights' path; it must lie under ws/install). Passes when the managed node reaches `active`
# (`ros2 lifecycle get /agegender_node`), inside a private network namespace (scripts/netns_run.sh).
#
#   scripts/workspace_check.sh           (after `make test` or `make build`; .ci/run calls it)
#
# The ROS 2 installation an integrator sources (/opt/ros/<distro>/setup.bash) is here the venv's ROS 2 Jazzy
# wheels (scripts/ros_setup.sh) plus the tools built from ../shared/ros2 (scripts/ros_underlay.sh); without
# ../shared/ros2 and without a sourced `ros2`, the check is skipped and says why.
# Environment knobs:
#   AGEGENDER_VENV=.venv        the development venv (`make venv`)
#   AGEGENDER_WS_KEEP=1         keep the temporary workspace (its path is printed) instead of removing it
# Exit status: non-zero when the build fails, the launch stops, or the node does not reach `active`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
VENV="${AGEGENDER_VENV:-.venv}"
say() { echo "workspace_check.sh: $*"; }

if [[ ! -f "$VENV/.agegender-installed" ]]; then
  make --no-print-directory venv VENV="$VENV"
fi
VENV="$(cd "$VENV" && pwd)"
UNDERLAY="$(bash scripts/ros_underlay.sh "$VENV" | tail -n 1)"
set +u  # the ROS / colcon setup scripts read unset variables
# shellcheck disable=SC1091
source "$VENV/ros_env.sh"
# shellcheck disable=SC1090
[[ -n "$UNDERLAY" ]] && source "$UNDERLAY"
set -u
if ! command -v ros2 >/dev/null 2>&1; then
  say "skipped: no \`ros2\` command (no ../shared/ros2 to build the ROS 2 tools from, no ROS 2 sourced)"
  exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/agegender-ws.XXXXXX")"
if [[ "${AGEGENDER_WS_KEEP:-0}" == 1 ]]; then
  trap 'say "workspace kept in $WORK"' EXIT
else
  trap 'rm -rf "$WORK"' EXIT
fi
WS="$WORK/ws"
mkdir -p "$WS/src/agegender_ros" "$WORK/tmp"
# What `git clone` gives: the checkout's files (tracked, and new ones git does not ignore), without its venv,
# build or install folders.
git ls-files -co --exclude-standard -z | tar -c --null --no-recursion --ignore-failed-read -T - -f - 2>/dev/null \
  | tar -x -C "$WS/src/agegender_ros"

t0=$SECONDS
# An integrator's line exactly. CMake finds the venv's Python through VIRTUAL_ENV (ros_env.sh), as it finds
# /usr/bin/python3 on a machine with ROS from apt.
if ! (cd "$WS" && colcon build >"$WORK/build.log" 2>&1); then
  tail -n 60 "$WORK/build.log" >&2
  say "FAILED: colcon build in $WS (full log above, last 60 lines)" >&2
  exit 1
fi
say "colcon build of ws/src/agegender_ros took $((SECONDS - t0)) s"

SHARE="$WS/install/agegender_ros/share/agegender_ros"
for file in "$SHARE/launch/nano.launch.py" "$SHARE/config/nano.yaml" "$SHARE/config/fastdds_large_shm.xml" \
            "$WS/install/agegender_ros/lib/agegender_ros/agegender_node"; do
  [[ -f "$file" ]] || { say "FAILED: the build did not install ${file#"$WS/"}" >&2; exit 1; }
done
# Nothing but install/ may serve the launch.
rm -rf "$WS/src" "$WS/build"

set +u
# shellcheck disable=SC1091
source "$WS/install/setup.bash"
set -u
t0=$SECONDS
rc=0
# The launch in the background; its log is polled for the node's "reading ...; publishing ..." line (logged when
# it activates), then the lifecycle service is asked. ROS_HOME and TMPDIR keep the launch's logs and parameter
# files in $WORK. AGEGENDER_WEIGHTS is unset: the node must take the weights the package installed.
env -u AGEGENDER_WEIGHTS ROS_HOME="$WORK/ros_home" TMPDIR="$WORK/tmp" LAUNCH_LOG="$WORK/launch.log" \
  scripts/netns_run.sh timeout -s KILL 100 bash -c '
  # (A background job of a non-interactive shell starts with SIGINT ignored: undo that, so Ctrl-C stops it.)
  ( trap - INT; exec ros2 launch agegender_ros nano.launch.py >"$LAUNCH_LOG" 2>&1 ) &
  launch=$!
  for _ in $(seq 120); do
    grep -q "reading .*; publishing" "$LAUNCH_LOG" && break
    kill -0 "$launch" 2>/dev/null || break
    sleep 0.5
  done
  for _ in 1 2 3; do  # discovery may not have met the node yet: "Node not found"
    state="$(timeout 30 ros2 lifecycle get /agegender_node --no-daemon --spin-time 3 2>&1 || true)"
    [[ "$state" == active* ]] && break
  done
  echo "ros2 lifecycle get /agegender_node: $state"
  kill -INT "$launch" 2>/dev/null
  wait "$launch"
  [[ "$state" == active* ]]
' || rc=$?
say "ros2 launch agegender_ros nano.launch.py: $((SECONDS - t0)) s"
grep -E "detector .*backend|reading .*; publishing" "$WORK/launch.log" | sed 's/^/   /' || true
weights="$(grep -oE ', weights [^ ]+' "$WORK/launch.log" | head -n 1 | cut -d' ' -f3)"
if [[ $rc -eq 0 && "$weights" != "$WS/install/"* ]]; then
  say "FAILED: the node took its weights from ${weights:-(not logged)}, not from $WS/install" >&2
  rc=1
fi
if [[ $rc -ne 0 ]]; then
  sed 's/^/   | /' "$WORK/launch.log" | tail -n 40 >&2
  say "FAILED: the node of the workspace's install/ did not reach active (launch log above)" >&2
  exit 1
fi
say "OK: built as ws/src/agegender_ros, launched from ws/install alone, node active"
