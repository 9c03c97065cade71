"""Reference outputs of the teachers from TensorFlow.js itself, for the parity test of their PyTorch re-runs.

`python -m training.teachers.reference record` (needs node + npm; run once, output committed):
  1. crops every face of the bundled public-domain sample photos as the teachers crop them (box + margin,
     clipped to the photo), before resizing, into test/data/teacher_reference/face_NN.png (lossless);
  2. resizes and normalises them with `Teacher.crop`/`normalise`'s exact steps and hands the float inputs to
     training/teachers/js/record_reference.js, which runs each teacher's model.json with TensorFlow.js (wasm);
  3. writes what TensorFlow.js answered to test/data/teacher_reference/reference.json.
test/test_teachers.py then runs the PyTorch teachers on the same PNGs and compares.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
REFERENCE_DIR = REPO / "test" / "data" / "teacher_reference"
JS_DIR = Path(__file__).resolve().parent / "js"
SAMPLES = ("astronaut.jpg", "solvay_1927.jpg")


def face_regions(teacher) -> list[np.ndarray]:
    """Every sample face, cropped (box + the teacher's margin, clipped), not yet resized."""
    from agegender_ros import faces

    detector = faces.create_detector("scrfd")
    regions = []
    for name in SAMPLES:
        image = faces.read_image(REPO / "agegender_ros" / "samples" / name)
        for detection in detector.detect(image):
            x1, y1, x2, y2 = teacher.crop_box(image.shape, detection.box)
            regions.append(image[y1:y2, x1:x2].copy())
    return regions


def load_reference_inputs(teacher) -> tuple[list[str], np.ndarray]:
    """(file names, normalised NHWC inputs) of the committed reference faces, resized as `Teacher.crop` does."""
    files = sorted(REFERENCE_DIR.glob("face_*.png"))
    size = teacher.spec.input_size
    crops = np.stack([cv2.resize(cv2.imread(str(f)), (size, size), interpolation=cv2.INTER_LINEAR) for f in files])
    return [f.name for f in files], teacher.normalise(crops)


def record(names: list[str], backend: str) -> dict:
    from . import Teacher, fetch_teacher

    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    first = Teacher.load(names[0])
    for old in REFERENCE_DIR.glob("face_*.png"):
        old.unlink()
    for i, region in enumerate(face_regions(first)):
        cv2.imwrite(str(REFERENCE_DIR / f"face_{i:02d}.png"), region)
    if not (JS_DIR / "node_modules").is_dir():
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True)
    reference = {}
    for name in names:
        teacher = Teacher.load(name)
        files, inputs = load_reference_inputs(teacher)
        with tempfile.NamedTemporaryFile(suffix=".f32") as raw:
            raw.write(np.ascontiguousarray(inputs, np.float32).tobytes())
            raw.flush()
            run = subprocess.run(["node", str(JS_DIR / "record_reference.js"), str(fetch_teacher(name)), raw.name,
                                  str(len(files)), str(teacher.spec.input_size), backend],
                                 capture_output=True, text=True, check=True)
        answer = json.loads(run.stdout)
        probs = np.asarray(answer["outputs"][teacher.age_output], np.float64)
        p_male = np.asarray(answer["outputs"][teacher.gender_output], np.float64).reshape(-1)
        from . import decode_age

        ages = decode_age(probs, teacher.spec.age_offset)
        reference[name] = {"backend": answer["backend"], "tfjs": answer["tfjs"],
                           "faces": {f: {"age": round(float(a), 4), "p_male": round(float(p), 5)}
                                     for f, a, p in zip(files, ages, p_male)}}
    (REFERENCE_DIR / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    return reference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["record"])
    parser.add_argument("--teacher", action="append", help="default: every registered teacher")
    parser.add_argument("--backend", default="wasm", choices=["wasm", "cpu"])
    args = parser.parse_args(argv)
    from . import TEACHERS

    reference = record(args.teacher or list(TEACHERS), args.backend)
    for name, entry in reference.items():
        print(f"{name}: {len(entry['faces'])} faces recorded with tfjs {entry['tfjs']} ({entry['backend']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
