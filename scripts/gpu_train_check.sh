#!/usr/bin/env bash
# The CUDA side of training and torch inference, in one go on a GPU machine (the CPU runs of CI never reach it):
#   1. the shipped weights on torch/CUDA against torch/CPU and ONNX Runtime (same faces, max differences);
#   2. training throughput on the GPU (crops in device memory, augmentation there, AMP), with and without
#      --camera-augment (whose JPEG step runs on the CPU);
#   3. the training tests (test_training, test_reparam, test_model) with `--device auto`, i.e. on CUDA, and
#      test_backends (torch, ONNX Runtime, TensorRT where installed); needs pytest-xdist (PYTEST_WORKERS, default 6);
#   4. FG-NET leave-one-person-out fine-tuned from the shipped weights (the paper's Table 2/4 protocol), to compare
#      with the same command on a CPU;
#   5. `agegender bench` with the torch backend on CUDA.
#
#   FGNET=path/to/fgnet bash scripts/gpu_train_check.sh     # results in ./gpu_train_out (or in $OUT when set)
#
# Without $FGNET, steps 2 and 4 are left out; STEPS picks steps (default "parity throughput tests lopo bench");
# LOPO_MAX_FOLDS stops the protocol after that many folds. Each step has its own time limit (seconds:
# PARITY_TIMEOUT, THROUGHPUT_TIMEOUT, PYTEST_TIMEOUT, LOPO_TIMEOUT, BENCH_TIMEOUT); a step that runs out is
# reported and the next one runs. The tests that read real faces find them in ../shared/data or in
# $AGEGENDER_SHARED_DATA (test/conftest.py), else skip. Python: $PYTHON, else python3 (it must have torch with
# CUDA). The package runs from this source tree.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT_DIR="${OUT:-$PWD/gpu_train_out}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
say() { echo "[gpu_train_check] $*" | tee -a "$SUMMARY"; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
export AGEGENDER_CACHE="$SCRATCH/cache"
WEIGHTS=agegender_ros/weights/paper_aaf_utk.pt
STEPS=" ${STEPS:-parity throughput tests lopo bench} "
step() { [[ "$STEPS" == *" $1 "* ]]; }
STATUS=0

"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { say "torch sees no CUDA device: nothing to check"; exit 1; }

# ---- 1. environment and inference parity ----------------------------------------------------------------------
if step parity; then
timeout "${PARITY_TIMEOUT:-60}" "$PY" - "$WEIGHTS" "${FGNET:-}" <<'EOF' 2>&1 | tee "$OUT_DIR/parity.txt" | tee -a "$SUMMARY"
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime
import torch

from agegender_ros.backends import OnnxRuntimeBackend
from agegender_ros.model_io import normalise_crops
from agegender_ros.torch_backend import TorchBackend
from agegender_ros.weights import checked_onnx, load_model

print("torch", torch.__version__, "| CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(0),
      "| cv2", cv2.__version__, "| onnxruntime", onnxruntime.__version__, "| python", sys.version.split()[0])
weights, fgnet = sys.argv[1], sys.argv[2]
# Real faces where FG-NET is given (whole photos resized: real pixel statistics; alignment does not matter for a
# comparison of backends), else random crops.
photos = sorted(Path(fgnet).rglob("*.[jJ][pP][gG]"))[:256] if fgnet else []
crops = np.stack([cv2.resize(cv2.imread(str(p)), (64, 64), interpolation=cv2.INTER_AREA) for p in photos]) \
    if photos else np.random.default_rng(0).integers(0, 256, (256, 64, 64, 3), dtype=np.uint8)
batch = normalise_crops(crops)
model, card = load_model(weights)
outputs = {"torch-cpu": TorchBackend(model, "cpu")(batch)}
model, _ = load_model(weights)  # a second copy: TorchBackend moves its model to the device
outputs["torch-cuda"] = TorchBackend(model, "cuda")(batch)
try:  # the ONNX file the card names, checked against these weights, as the runtime runs it
    outputs["onnxruntime"] = OnnxRuntimeBackend(str(checked_onnx(weights, card)))(batch)
except Exception as error:  # noqa: BLE001 - report and go on with the torch comparison
    print("onnxruntime backend unavailable:", error)
reference = outputs["torch-cpu"]
print(f"{len(batch)} {'FG-NET photos' if photos else 'random crops'}; max |difference| from torch on the CPU:")
for name, (age, p_male, age_std) in outputs.items():
    print(f"  {name:12s} age {np.abs(age - reference[0]).max():.2e} y, P(male) {np.abs(p_male - reference[1]).max():.2e},"
          f" age std {np.abs(age_std - reference[2]).max():.2e}; mean age {age.mean():.3f}")
age_gap = np.abs(outputs["torch-cuda"][0] - reference[0]).max()
p_gap = np.abs(outputs["torch-cuda"][1] - reference[1]).max()
# TF32 (Ampere and later) moved ages by 0.043 years on an H200; TensorRT's FP16 is allowed 0.5 (test_backends).
ok = age_gap < 0.2 and p_gap < 0.01
print("PARITY", "ok" if ok else "FAILED", f"(torch CUDA vs CPU: age {age_gap:.3g} y, P(male) {p_gap:.3g})")
sys.exit(0 if ok else 1)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { STATUS=1; say "parity: FAILED or timed out"; }
fi

# ---- 2. training throughput -----------------------------------------------------------------------------------
throughput() {  # name, extra train arguments...
  local name="$1"; shift
  if timeout "${THROUGHPUT_TIMEOUT:-90}" "$PY" -m agegender_ros.cli train --dataset fgnet --root "$FGNET" \
      --epochs 3 --device cuda --no-progress --out "$SCRATCH/$name" "$@" >"$OUT_DIR/train_$name.log" 2>&1; then
    "$PY" - "$SCRATCH/$name/metrics.json" "$name" "$*" <<'EOF' | tee -a "$SUMMARY"
import json, sys
history = json.load(open(sys.argv[1]))["history"]
rates = ", ".join(f"{h['images_per_s']:.0f}" for h in history)
print(f"[gpu_train_check] throughput {sys.argv[2]} ({sys.argv[3]}): images/s per epoch {rates};"
      f" FG-NET fold-0 MAE after 3 epochs {history[-1]['mae']:.2f}")
EOF
  else
    STATUS=1; say "throughput $name: FAILED or timed out (train_$name.log)"; tail -n 5 "$OUT_DIR/train_$name.log"
  fi
}
if [ -z "${FGNET:-}" ]; then
  say "no \$FGNET: throughput and LOPO left out"
elif step throughput; then
  throughput b128 --batch-size 128
  throughput b512 --batch-size 512
  throughput b128_camera --batch-size 128 --camera-augment
fi

# ---- 3. the training tests on CUDA ----------------------------------------------------------------------------
if step tests; then
  say "pytest test_training test_reparam test_model test_backends on CUDA (--device auto) (timeout ${PYTEST_TIMEOUT:-240}s)"
  timeout "${PYTEST_TIMEOUT:-240}" "$PY" -m pytest test/test_training.py test/test_reparam.py test/test_model.py \
    test/test_backends.py -q -rs -p no:cacheprovider -n "${PYTEST_WORKERS:-6}" --junitxml "$OUT_DIR/pytest.xml" \
    >"$OUT_DIR/pytest.txt" 2>&1
  TEST_STATUS=$?
  say "pytest: $(tail -n 1 "$OUT_DIR/pytest.txt") (exit $TEST_STATUS)"
  [ "$TEST_STATUS" -eq 0 ] || STATUS=1
fi

# ---- 4. FG-NET LOPO fine-tuned from the shipped weights -------------------------------------------------------
if [ -n "${FGNET:-}" ] && step lopo; then
  say "FG-NET LOPO, 10 epochs per fold from $WEIGHTS on CUDA (timeout ${LOPO_TIMEOUT:-240}s)"
  timeout "${LOPO_TIMEOUT:-240}" "$PY" -m agegender_ros.cli protocol --dataset fgnet --root "$FGNET" --protocol lopo \
    --model paper --age-bins 12 --init-weights "$WEIGHTS" --epochs 10 --batch-size 32 --lr 5e-4 --device cuda \
    ${LOPO_MAX_FOLDS:+--max-folds "$LOPO_MAX_FOLDS"} --no-progress --out "$SCRATCH/lopo" --json >"$OUT_DIR/lopo.json" 2>"$OUT_DIR/lopo.stderr.txt"
  LOPO_STATUS=$?
  [ -s "$OUT_DIR/lopo.json" ] && "$PY" - "$OUT_DIR/lopo.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
m = r["mean"]
print(f"[gpu_train_check] LOPO: {m['folds']} folds, {r['images']} images, pooled MAE {m['mae_pooled']:.3f},"
      f" CA(3) {m['ca3']:.3f}, CA(5) {m['ca5']:.3f}, wall {r['wall_s']:.0f} s")
EOF
  [ "$LOPO_STATUS" -eq 0 ] || { say "LOPO: exit $LOPO_STATUS (124: timed out)"; tail -n 3 "$OUT_DIR/lopo.stderr.txt"; }
fi

# ---- 5. bench -------------------------------------------------------------------------------------------------
if ! step bench; then
  :
elif timeout "${BENCH_TIMEOUT:-60}" "$PY" -m agegender_ros.cli bench --json --seconds 1 --backends torch,onnxruntime \
    --torch-device cuda >"$OUT_DIR/bench.json" 2>"$OUT_DIR/bench.stderr.txt"; then
  say "bench: bench.json"
else
  say "bench failed or timed out: bench.stderr.txt"; tail -n 3 "$OUT_DIR/bench.stderr.txt"
fi

[ "$STATUS" -eq 0 ] && say "RESULT: passed" || say "RESULT: FAILED"
exit "$STATUS"
