#!/usr/bin/env bash
# Run one build step with its output in a log file: one line while it runs and when it ends, the step's whole
# output only when it fails (what the Makefile's venv and build targets use, so that `make demo` shows the demo, not pip's and
# colcon's output).
#
#   scripts/logged_step.sh "colcon build" log/make/build.log CMD [ARGS...]
#
# The log is appended to (the Makefile empties it when a target starts). V=1 (`make demo V=1`): the output as it
# comes, on the terminal, as well as in the log. Exit status: the command's.
set -uo pipefail
name="$1"
log="$2"
shift 2
mkdir -p "$(dirname "$log")"
printf '\n==> %s: %s\n' "$name" "$*" >>"$log"
start=$(($(stat -c %s "$log") + 1))  # where this step's output begins in the log
t0=$SECONDS
if [[ -n "${V:-}" && "${V:-0}" != 0 ]]; then
  echo "==> $name"
  "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
else
  printf '%s ... ' "$name"
  "$@" >>"$log" 2>&1
  rc=$?
fi
if [[ $rc -eq 0 ]]; then
  echo "done in $((SECONDS - t0)) s (log: $log)"
else
  echo "FAILED (exit $rc) after $((SECONDS - t0)) s"
  if [[ -z "${V:-}" || "${V:-0}" == 0 ]]; then
    echo "---------- $name: its output, from $log ----------" >&2
    tail -c "+$start" "$log" >&2
    echo "---------- end of $name's output ----------" >&2
  fi
  echo "$name failed (exit $rc); its log: $log" >&2
fi
exit $rc
