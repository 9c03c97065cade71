"""Faces found on FairFace's dev split (protocol dev10) by the runtime's detection step, with and without its close-up
pass (agegender_ros/faces.py), as `agegender predict` and the node see the photos (no dataset padding).

    .venv/bin/python docs/fairface_detection.py --root FAIRFACE [--detector scrfd] [--threads 1]
"""
import argparse
import json
import time

import cv2

from agegender_ros import faces
from training.cli import load_dataset
from training.protocols import folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="FairFace: the folder holding fairface_label_train.csv")
    parser.add_argument("--detector", default="scrfd", choices=["scrfd", "blazeface"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    data = load_dataset("fairface", args.root, "scrfd", progress=False)
    (_, _, dev), = folds("dev10", data)
    photos = [faces.read_image(path) for path in data.paths[dev]]
    off = {"closeup_size": 0} if args.detector == "scrfd" else {"closeup": False}
    result = {"photos": len(photos), "detector": args.detector}
    for label, options in (("without close-up pass", off), ("with close-up pass", {})):
        detector = faces.create_detector(args.detector, threads=args.threads, **options)
        started = time.perf_counter()
        found = sum(bool(detector.detect(photo)) for photo in photos)
        result[label] = {"found": found, "rate": round(found / len(photos), 4),
                         "ms_per_photo": round((time.perf_counter() - started) / len(photos) * 1e3, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
