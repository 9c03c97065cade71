"""The estimator: a BGR uint8 frame -> faces with box, detection score, age, gender and P(male).

Detection, `align_crop` and the network backend, with all faces of a frame run through the network as one batch.
Used by the `agegender` command, the benchmarks and the ROS 2 node alike.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .backends import Backend, create_backend
from .faces import CROP_SCALE, FaceDetector, align_crop, create_detector
from .model_io import normalise_crops
from .weights import crop_scale, default_weights_path, read_card

log = logging.getLogger(__name__)


@dataclass
class FaceEstimate:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    score: float  # detection score
    age: float  # years
    age_std: float  # unweighted spread of the network heads' ages (years): an uncertainty hint
    p_male: float
    landmarks: np.ndarray | None = None

    @property
    def gender(self) -> str:
        return "male" if self.p_male >= 0.5 else "female"

    @property
    def gender_confidence(self) -> float:
        return max(self.p_male, 1.0 - self.p_male)

    def to_json(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "score": round(self.score, 4),
                "age": round(self.age, 2), "age_std": round(self.age_std, 2), "gender": self.gender,
                "p_male": round(self.p_male, 4)}


class Estimator:
    def __init__(self, detector: FaceDetector, backend: Backend, max_faces: int = 32, min_face_size: float = 0.0,
                 flip_tta: bool = False, crop_scale: float = CROP_SCALE):
        self.detector = detector
        self.backend = backend
        self.crop_scale = crop_scale  # the weights' own (weights.crop_scale): faces are cropped as in training
        self.max_faces = max_faces
        self.min_face_size = min_face_size
        # Also run each face's mirror image and average the two (test-time augmentation): twice the network time.
        self.flip_tta = flip_tta

    @classmethod
    def create(cls, weights: str | None = None, detector: str = "auto", backend: str = "auto",
               detector_options: dict | None = None, backend_options: dict | None = None, **options) -> "Estimator":
        face_detector = create_detector(detector, **(detector_options or {}))
        network = create_backend(backend, weights, **(backend_options or {}))  # checks the files and the card
        return cls(face_detector, network, crop_scale=crop_scale(read_card(weights or default_weights_path())),
                   **options)

    def __call__(self, frame_bgr: np.ndarray) -> list[FaceEstimate]:
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 BGR frame, got {frame_bgr.dtype} {frame_bgr.shape}")
        detections = [d for d in self.detector.detect(frame_bgr)
                      if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= self.min_face_size]
        # Most confident first, so a crowded frame keeps its clearest faces.
        detections = sorted(detections, key=lambda d: -d.score)[: self.max_faces]
        if not detections:
            return []
        crops = np.stack([align_crop(frame_bgr, d, crop_scale=self.crop_scale) for d in detections])
        return self.estimate_crops(crops, detections)

    def estimate_crops(self, crops_bgr: np.ndarray, detections) -> list[FaceEstimate]:
        if self.flip_tta:
            both = self.backend(normalise_crops(np.concatenate([crops_bgr, crops_bgr[:, :, ::-1]])))
            n = len(crops_bgr)
            ages, p_male, age_std = ((values[:n] + values[n:]) / 2 for values in both)
        else:
            ages, p_male, age_std = self.backend(normalise_crops(crops_bgr))
        return [FaceEstimate(tuple(float(v) for v in d.box), float(d.score), float(a), float(s), float(p),
                             d.landmarks) for d, a, p, s in zip(detections, ages, p_male, age_std)]


def draw_estimates(frame_bgr: np.ndarray, faces: list[FaceEstimate], labels: list[str] | None = None) -> np.ndarray:
    """A copy of the frame with each face's box and "age, gender" label (optional custom labels)."""
    import cv2

    canvas = frame_bgr.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 500))
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        colour = (255, 140, 0) if face.gender == "male" else (60, 60, 255)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = labels[i] if labels else f"{face.age:.0f} {face.gender[0].upper()}"
        scale = max(0.4, (x2 - x1) / 120)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        cv2.rectangle(canvas, (x1, y1 - th - base - 2), (x1 + tw + 2, y1), colour, -1)
        cv2.putText(canvas, text, (x1 + 1, y1 - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return canvas
