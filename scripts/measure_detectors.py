#!/usr/bin/env python3
"""Recall and speed of the face detectors (docs/results.md): the 29-person Solvay 1927 photo, the astronaut
portrait, and single-face dataset photos from ../shared/data when present.

    python scripts/measure_detectors.py [--n 300]

Solvay recall counts detections whose centre falls inside a face of the reference set (SCRFD at 1024 px, all 29
people, checked by eye); everything else is a false positive.
"""
import argparse
import random
import time
from pathlib import Path

import cv2
import numpy as np

from agegender_ros.faces import create_detector

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "agegender_ros" / "samples"
SHARED = REPO.parent / "shared" / "data"
CONFIGS = [("haar", {}), ("blazeface", {"variant": "short"}), ("blazeface", {"variant": "full"}),
           ("scrfd", {"input_size": 320}), ("scrfd", {"input_size": 640})]


def timed(detector, image, repeats=5):
    detector.detect(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        found = detector.detect(image)
        times.append(time.perf_counter() - start)
    return found, 1000 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300, help="dataset photos per dataset")
    args = parser.parse_args()
    solvay = cv2.imread(str(SAMPLES / "solvay_1927.jpg"))
    vga = cv2.resize(cv2.imread(str(SAMPLES / "astronaut.jpg")), (640, 480))
    reference = create_detector("scrfd", input_size=1024).detect(solvay)
    random.seed(0)
    dataset_files = []
    for folder in ("aaf/aglined faces", "utkface/crop_part1"):
        if (SHARED / folder).is_dir():
            dataset_files += random.sample(sorted((SHARED / folder).glob("*.jpg")), args.n)
    print(f"reference faces in Solvay photo: {len(reference)}; dataset photos: {len(dataset_files)}")
    print("| detector | Solvay 1600x1158: found / 29 (false pos.) | ms | 640x480 frame, 1 face: ms "
          "| dataset photos with a face found |")
    print("|---|---|---|---|---|")
    for name, options in CONFIGS:
        detector = create_detector(name, **options)
        found, ms_solvay = timed(detector, solvay)
        hits = set()
        false_positives = 0
        for det in found:
            cx, cy = (det.box[0] + det.box[2]) / 2, (det.box[1] + det.box[3]) / 2
            inside = [i for i, r in enumerate(reference) if r.box[0] <= cx <= r.box[2] and r.box[1] <= cy <= r.box[3]]
            hits.update(inside) if inside else None
            false_positives += not inside
        _, ms_vga = timed(detector, vga)
        found_in_dataset = 0
        for path in dataset_files:
            image = cv2.imread(str(path))
            pad = image.shape[0] // 4
            found_in_dataset += bool(detector.detect(cv2.copyMakeBorder(image, pad, pad, pad, pad,
                                                                         cv2.BORDER_CONSTANT)))
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        print(f"| {label} | {len(hits)} ({false_positives}) | {ms_solvay:.1f} | {ms_vga:.1f} | "
              f"{found_in_dataset}/{len(dataset_files)} |")


if __name__ == "__main__":
    main()
