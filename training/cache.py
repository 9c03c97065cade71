"""Preprocessing cache: detect -> align -> crop every image of a dataset once, with the runtime's own functions.

Crops are stored with extra context (`CONTEXT` x the inference crop) so augmentation can shift, scale and rotate
without borders; the unaugmented centre of a stored crop is what `align_crop` gives at inference. One `.npz` per
(dataset root, record list relative to it, settings), so any working directory or checkout reuses it: uint8 crops,
labels, subject ids, whether a face was found, the face box in the photo (distillation teachers crop their own,
larger inputs from it), and the files that failed and why. A change of any setting gives a new key, so stale caches
are never reused.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from agegender_ros import faces
from agegender_ros.backends import cache_dir

from .metrics import age_group_labelled

CONTEXT = 1.25  # stored crop side / inference crop side
STORED_SIZE = round(faces.CROP_SIZE * CONTEXT)  # 80 px
# Datasets of tight face crops (UTKFace) leave detectors no margin; pad before detecting.
DETECT_PAD = 0.25
# 4: face boxes stored; 5: paths stored relative to the dataset root; 6: age ranges and races stored, and the
# detectors' close-up pass (agegender_ros/faces.py) finds faces that fill the photo
CACHE_FORMAT = 6


@dataclass
class PreprocessedSet:
    crops: np.ndarray  # N x 80 x 80 x 3 uint8 BGR, the face centred with CONTEXT margin
    ages: np.ndarray  # N float32
    genders: np.ndarray  # N int8: 1 male, 0 female, -1 unknown
    subjects: np.ndarray  # N str
    paths: np.ndarray  # N str
    splits: np.ndarray  # N str (official split name or "")
    detected: np.ndarray  # N bool: a face was found (else the whole image was used)
    boxes: np.ndarray  # N x 4 float32 x1, y1, x2, y2 of that face (or the whole image) in the photo's pixels
    failed: list[tuple[str, str]]  # (path, reason) of images that could not be used at all
    sources: np.ndarray | None = None  # N str: the dataset each face came from (set when loaded, not stored)
    # N x 2 float32 [low, high) years of an age-group label (high inf: open-ended); [age, age] for a year's label,
    # NaN where there is no age. None: every label is a year (sets built by hand, e.g. in tests).
    age_ranges: np.ndarray | None = None
    races: np.ndarray | None = None  # N str: race labels ("" where none); None: the dataset has none

    def __post_init__(self):
        if self.age_ranges is None:
            self.age_ranges = np.repeat(np.asarray(self.ages, np.float32)[:, None], 2, 1)
        if self.races is None:
            self.races = np.full(len(self.ages), "")

    def subset(self, index) -> "PreprocessedSet":
        index = np.asarray(index, np.int64)
        return PreprocessedSet(self.crops[index], self.ages[index], self.genders[index], self.subjects[index],
                               self.paths[index], self.splits[index], self.detected[index], self.boxes[index], [],
                               None if self.sources is None else self.sources[index], self.age_ranges[index],
                               self.races[index])

    @property
    def has_intervals(self) -> bool:
        """Whether any face is labelled with an age group rather than a year."""
        return bool(age_group_labelled(self.age_ranges).any())

    def __len__(self) -> int:
        return len(self.ages)


ARRAY_FIELDS = ("crops", "ages", "genders", "subjects", "paths", "splits", "detected", "boxes", "age_ranges", "races")


def concatenate(sets: list[PreprocessedSet]) -> PreprocessedSet:
    sources = np.concatenate([s.sources for s in sets]) if all(s.sources is not None for s in sets) else None
    arrays = {f: np.concatenate([getattr(s, f) for s in sets]) for f in ARRAY_FIELDS}
    return PreprocessedSet(**arrays, failed=[f for s in sets for f in s.failed], sources=sources)


def settings(detector: str, crop_scale: float = faces.CROP_SCALE) -> dict:
    return {"format": CACHE_FORMAT, "detector": detector, "crop_scale": crop_scale, "context": CONTEXT,
            "stored_size": STORED_SIZE, "detect_pad": DETECT_PAD}


def crop_with_context(image: np.ndarray, detection: faces.FaceDetection,
                      crop_scale: float = faces.CROP_SCALE) -> np.ndarray:
    return faces.align_crop(image, detection, STORED_SIZE, context=CONTEXT, crop_scale=crop_scale)


def pick_main_face(detections: list[faces.FaceDetection], shape) -> faces.FaceDetection | None:
    """In a single-face dataset image, the face: large, confident and near the centre."""
    if not detections:
        return None
    h, w = shape[:2]

    def merit(d: faces.FaceDetection) -> float:
        cx, cy = (d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2
        off_centre = np.hypot((cx - w / 2) / w, (cy - h / 2) / h)
        area = (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]) / (w * h)
        return d.score + area - off_centre

    return max(detections, key=merit)


_worker_detector = None


def _init_worker(detector_name: str) -> None:
    global _worker_detector
    cv2.setNumThreads(1)
    options = {"threads": 1} if detector_name in ("scrfd", "blazeface") else {}
    _worker_detector = faces.create_detector(detector_name, **options)


def detect_main_face(image: np.ndarray, detector) -> faces.FaceDetection | None:
    """The dataset image's main face in image pixels, detected on a padded copy (tight crops leave no margin)."""
    pad_y, pad_x = int(image.shape[0] * DETECT_PAD), int(image.shape[1] * DETECT_PAD)
    padded = cv2.copyMakeBorder(image, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT)
    face = pick_main_face(detector.detect(padded), padded.shape)
    if face is not None:
        shift = np.array([pad_x, pad_y], np.float32)
        face.box = face.box - np.tile(shift, 2)
        if face.landmarks is not None:
            face.landmarks = face.landmarks - shift
    return face


def _process(path: str, crop_scale: float):
    """(crop, detected, box, None) or (None, False, None, reason) for one image file."""
    try:
        image = faces.read_image(path)
    except faces.ImageReadError as error:
        return None, False, None, error.reason
    face = detect_main_face(image, _worker_detector)
    detected = face is not None
    if not detected:
        face = faces.whole_image_detection(image)
    return crop_with_context(image, face, crop_scale), detected, np.asarray(face.box, np.float32), None


def relative_paths(root: str, records) -> list[str]:
    """The records' files relative to the dataset root: what the cache keys on and stores, so that the same
    dataset reached from another working directory or checkout reuses the cache."""
    base = os.path.abspath(os.path.expanduser(root))
    return [os.path.relpath(os.path.abspath(r.path), base) for r in records]


def cache_key(name: str, root: str, records, detector: str, crop_scale: float = faces.CROP_SCALE,
              relative: list[str] | None = None) -> str:
    """`relative`: relative_paths(root, records), where the caller has them already."""
    digest = hashlib.sha256(json.dumps([name, str(Path(root).expanduser().resolve()),
                                        settings(detector, crop_scale)]).encode())
    for r, path in zip(records, relative if relative is not None else relative_paths(root, records)):
        digest.update(f"{path}|{r.age}|{r.gender}|{r.subject}|{r.split}|{r.age_range}|{r.race}\n".encode())
    return f"{name}-{digest.hexdigest()[:16]}"


def load_or_build(name: str, root: str, records, detector: str = "scrfd", workers: int | None = None,
                  progress: bool = True, crop_scale: float = faces.CROP_SCALE) -> PreprocessedSet:
    """The cached preprocessed set for these records, building it (in parallel, with a progress bar) if needed.
    `crop_scale`: the training run's, or the card's of the weights to be scored."""
    relative = relative_paths(root, records)
    path = cache_dir() / "preprocessed" / f"{cache_key(name, root, records, detector, crop_scale, relative)}.npz"
    if path.is_file():
        # Stored paths are relative to the root; give them back as this caller's records name them.
        as_given = dict(zip(relative, (r.path for r in records)))
        with np.load(path, allow_pickle=False) as data:
            arrays = {f: data[f] for f in ARRAY_FIELDS}
            failed = [(as_given[p], reason) for p, reason in json.loads(str(data["failed"]))]
        arrays["paths"] = np.array([as_given[p] for p in arrays["paths"]], dtype=str)
        return PreprocessedSet(**arrays, failed=failed, sources=np.full(len(arrays["ages"]), name))
    workers = workers or min(2, os.cpu_count() or 1)
    paths = [r.path for r in records]
    results = []
    with get_context("spawn").Pool(workers, _init_worker, (detector,)) as pool:
        iterator = pool.imap(functools.partial(_process, crop_scale=crop_scale), paths, chunksize=32)
        if progress:
            from tqdm import tqdm

            iterator = tqdm(iterator, total=len(paths), desc=f"preprocess {name}", unit="img")
        results = list(iterator)
    keep = [i for i, result in enumerate(results) if result[0] is not None]
    dropped = [i for i, result in enumerate(results) if result[0] is None]
    failed = [(paths[i], results[i][3]) for i in dropped]
    empty = np.zeros((0, STORED_SIZE, STORED_SIZE, 3), np.uint8)
    result = PreprocessedSet(
        crops=np.stack([results[i][0] for i in keep]) if keep else empty,
        ages=np.array([records[i].age for i in keep], np.float32),
        genders=np.array([records[i].gender for i in keep], np.int8),
        subjects=np.array([records[i].subject for i in keep], dtype=str),
        paths=np.array([records[i].path for i in keep], dtype=str),
        splits=np.array([records[i].split for i in keep], dtype=str),
        age_ranges=np.array([records[i].age_range or (records[i].age, records[i].age) for i in keep],
                            np.float32).reshape(-1, 2),
        races=np.array([records[i].race for i in keep], dtype=str),
        detected=np.array([results[i][1] for i in keep], bool),
        boxes=np.array([results[i][2] for i in keep], np.float32).reshape(-1, 4),
        failed=failed,
        sources=np.full(len(keep), name),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    stored = {f: getattr(result, f) for f in ARRAY_FIELDS}
    stored["paths"] = np.array([relative[i] for i in keep], dtype=str)
    np.savez(partial, **stored, failed=json.dumps([(relative[i], results[i][3]) for i in dropped]))
    os.replace(partial, path)
    return result
