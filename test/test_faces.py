"""Face detectors on real photos, and the crop geometry shared by training and inference."""
import math

import cv2
import numpy as np
import pytest

from agegender_ros import faces
from conftest import SAMPLES, shared

DETECTORS = ["haar", "blazeface", "scrfd"]


def make_detector(name):
    try:
        return faces.create_detector(name)
    except faces.DetectorUnavailable as error:
        pytest.skip(f"{name} unavailable here: {error}")


def centre_inside(detection, x_range, y_range):
    cx, cy = (detection.box[0] + detection.box[2]) / 2, (detection.box[1] + detection.box[3]) / 2
    return x_range[0] <= cx <= x_range[1] and y_range[0] <= cy <= y_range[1]


# --- geometry -----------------------------------------------------------------------------------------------


def test_box_crop_maps_the_face_square_onto_the_crop():
    detection = faces.FaceDetection(np.array([100, 50, 200, 150], np.float32), 0.9, None)
    # box_scale 1: the box is the square at the crop scale detector boxes were calibrated at
    centre, side, angle = faces.face_square(detection, faces.BOX_CALIBRATION_CROP_SCALE)
    assert angle == 0
    np.testing.assert_allclose(centre, [150, 100])
    assert side == pytest.approx(100)
    matrix = faces.crop_matrix(centre, side, angle, 64)
    corners = np.array([[100, 50, 1], [200, 150, 1], [150, 100, 1]], float) @ matrix.T
    np.testing.assert_allclose(corners, [[0, 0], [64, 64], [32, 32]], atol=1e-6)


def test_crop_content_comes_from_the_box():
    frame = np.zeros((300, 400, 3), np.uint8)
    frame[50:150, 100:200] = (0, 0, 255)  # a red square exactly where the box is
    crop = faces.align_crop(frame, faces.FaceDetection(np.array([100, 50, 200, 150], np.float32), 1.0, None),
                            crop_scale=faces.BOX_CALIBRATION_CROP_SCALE)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert (crop[2:-2, 2:-2, 2] > 200).all() and (crop[2:-2, 2:-2, :2] < 30).all()


def test_landmarks_level_the_eye_line_and_context_widens_the_crop():
    # Eyes 40 px apart on a line tilted by 30 degrees; mouth below their midpoint, perpendicular to it.
    angle = math.radians(30)
    left = np.array([200.0, 200.0])
    right = left + 40 * np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-math.sin(angle), math.cos(angle)])
    mouth = (left + right) / 2 + 44 * normal
    landmarks = np.array([right, left, (left + right) / 2 + 20 * normal, mouth - 15 * normal[::-1],
                          mouth + 15 * normal[::-1]], np.float32)
    detection = faces.FaceDetection(np.array([150, 150, 280, 300], np.float32), 1.0, landmarks)
    centre, side, found_angle = faces.face_square(detection)
    assert found_angle == pytest.approx(angle, abs=1e-6)
    assert side == pytest.approx(faces.CROP_SCALE * 40, rel=1e-5)
    matrix = faces.crop_matrix(centre, side, found_angle, 64)
    eyes_in_crop = np.c_[landmarks[:2], np.ones(2)] @ matrix.T
    assert eyes_in_crop[0, 1] == pytest.approx(eyes_in_crop[1, 1], abs=1e-4)  # level
    wide = faces.crop_matrix(centre, side * 1.25, found_angle, 80)
    # The central 64 px of the 80 px context crop is the plain crop.
    np.testing.assert_allclose((np.c_[landmarks, np.ones(5)] @ wide.T) - 8, np.c_[landmarks, np.ones(5)] @ matrix.T,
                               atol=1e-4)


def test_crop_scale_sizes_the_square_about_the_same_centre_for_every_detector_kind():
    landmarks = np.array([[90, 100], [130, 100], [110, 120], [98, 140], [122, 140]], np.float32)
    with_landmarks = faces.FaceDetection(np.array([70, 60, 150, 170], np.float32), 1.0, landmarks)
    haar_like = faces.FaceDetection(np.array([70, 60, 150, 140], np.float32), 1.0, None, box_scale=1.21,
                                    box_shift=-0.016)
    for detection in (with_landmarks, haar_like):
        centre_a, side_a, _ = faces.face_square(detection, 2.6)
        centre_b, side_b, _ = faces.face_square(detection, 3.2)
        np.testing.assert_allclose(centre_a, centre_b)
        assert side_b / side_a == pytest.approx(3.2 / 2.6)
    assert faces.face_square(with_landmarks, 3.2)[1] == pytest.approx(3.2 * 40)
    assert faces.face_square(haar_like, faces.BOX_CALIBRATION_CROP_SCALE)[1] == pytest.approx(1.21 * 80)
    # Where no face was found the crop is the whole photo, whatever the scale.
    frame = np.zeros((120, 90, 3), np.uint8)
    for scale in (2.6, 3.2):
        centre, side, angle = faces.face_square(faces.whole_image_detection(frame), scale)
        np.testing.assert_allclose(centre, [45, 60])
        assert side == 120 and angle == 0


def test_unknown_detector_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown detector"):
        faces.create_detector("yolo")


def test_opencv_without_haar_cascades_is_a_clear_error(monkeypatch):
    monkeypatch.delattr(cv2, "CascadeClassifier")  # as in OpenCV 5
    with pytest.raises(faces.DetectorUnavailable, match=r"no Haar cascades: pip install 'opencv-python-headless<5'"):
        faces.create_detector("haar")


def test_missing_scrfd_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(faces.DetectorUnavailable, match="fetch-detector"):
        faces.ScrfdDetector(model_path=tmp_path / "missing.onnx")


# --- detectors on real photos ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_finds_the_astronaut(name):
    image = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    found = make_detector(name).detect(image)
    assert len(found) == 1
    assert centre_inside(found[0], (180, 275), (60, 180))
    crop = faces.align_crop(image, found[0])
    assert crop.shape == (64, 64, 3)


def test_scrfd_finds_most_of_the_solvay_conference():
    image = cv2.imread(str(SAMPLES / "solvay_1927.jpg"))
    found = make_detector("scrfd").detect(image)
    # 29 people sit for the photo; at the default 320 px input a couple of the smallest faces are missed.
    assert 25 <= len(found) <= 31
    assert all(f.landmarks is not None and f.landmarks.shape == (5, 2) for f in found)


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("dataset,pattern", [("aaf/aglined faces", "*.jpg"), ("utkface/crop_part1", "*.jpg")])
def test_detector_finds_faces_in_real_dataset_photos(name, dataset, pattern):
    files = sorted(shared(dataset).glob(pattern))[::500][:12]
    detector = make_detector(name)
    hits = 0
    for path in files:
        image = cv2.imread(str(path))
        # Dataset photos are tight crops; give the detector the margin a camera frame would have.
        pad = image.shape[0] // 4
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
        found = detector.detect(padded)
        h, w = padded.shape[:2]
        hits += any(centre_inside(f, (w * 0.3, w * 0.7), (h * 0.3, h * 0.7)) for f in found)
    assert hits >= len(files) - 1, f"{name} found {hits} of {len(files)} faces"
