#!/usr/bin/env bash
# Run a command in a private network namespace whose only interface is loopback, so that DDS
# (ROS 2 discovery and traffic) can never leave this host:
#
#   scripts/netns_run.sh CMD [ARGS...]
#
# Inside: lo is up with MULTICAST on and a 224.0.0.0/4 route on lo (Fast DDS discovery needs
# multicast), ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (Jazzy+) and, when ROS_DISTRO is humble or
# older, ROS_LOCALHOST_ONLY=1 are exported. AGEGENDER_NETNS=1 marks the namespace: when this script
# finds it already set, it just execs CMD (already isolated). Needs root or unprivileged user
# namespaces (`unshare -rn`). Processes CMD leaves running in the namespace are stopped when it ends.
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# A network namespace does not separate Fast DDS's shared-memory transport (/dev/shm): a private domain id
# keeps concurrent runs (two engineers' test suites, a demo beside the tests) from seeing each other.
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((RANDOM % 100 + 1))}"
# Humble and older only know ROS_LOCALHOST_ONLY; Jazzy+ warn that it is deprecated and let it override
# ROS_AUTOMATIC_DISCOVERY_RANGE, so set it only there.
case "${ROS_DISTRO:-}" in
  foxy|galactic|humble) export ROS_LOCALHOST_ONLY=1 ;;
esac

if [[ "${AGEGENDER_NETNS:-0}" == 1 ]]; then
  exec "$@"
fi

if [[ "$(id -u)" == 0 ]]; then
  UNSHARE=(unshare -n)
else
  UNSHARE=(unshare -r -n)  # map ourselves to root inside a new user namespace
fi

# The inner shell configures the namespace, runs CMD ("$@" is passed through intact) and passes SIGTERM / SIGINT /
# SIGHUP on to it. When CMD has ended, whatever it left running in this private namespace -- typically the
# `ros2 daemon` that `ros2 topic list` / `ros2 node list` start, or a node orphaned by a killed `ros2 launch` --
# is stopped (SIGTERM, then SIGKILL after 5 s): nothing can reach it from outside the namespace anyway. Only
# processes whose network namespace is this one are touched. Exit status: CMD's.
AGEGENDER_NETNS=1 exec "${UNSHARE[@]}" bash -c '
set -e
ip link set lo up
ip link set lo multicast on
ip route add 224.0.0.0/4 dev lo 2>/dev/null || true
export AGEGENDER_NETNS=1
set +e
ns="$(readlink /proc/self/ns/net)"
# An asynchronous command of a non-interactive shell starts with SIGINT ignored: undo that, so Ctrl-C still works.
( trap - INT QUIT; exec "$@" ) &
child=$!
trap "kill -TERM $child 2>/dev/null" TERM HUP
trap "kill -INT $child 2>/dev/null" INT
while kill -0 "$child" 2>/dev/null; do
  wait "$child"  # returns early when a trapped signal arrives: keep waiting for CMD
done
wait "$child"; rc=$?
trap - TERM HUP INT
leftovers() {
  local dir pid
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
    [[ "$(readlink "$dir/ns/net" 2>/dev/null)" == "$ns" ]] && echo "$pid"
  done
}
pids="$(leftovers)"
if [[ -n "$pids" ]]; then
  kill -TERM $pids 2>/dev/null
  for _ in $(seq 50); do
    pids="$(leftovers)"
    [[ -z "$pids" ]] && break
    sleep 0.1
  done
  [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null
fi
exit "$rc"
' netns_run "$@"
