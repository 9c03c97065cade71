"""`agegender predict` end to end on real photos, and every bad-input case: corrupt images, bad weights."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agegender_ros.weights import WeightsError, load_model
from conftest import SAMPLES, require_torch, shared


def run_predict(*args, env_weights=None):
    return subprocess.run([sys.executable, "-m", "agegender_ros.cli", "predict", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_predict_json_on_real_photos_and_annotated_output(tmp_path, random_weights):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(SAMPLES / "astronaut.jpg", photos)
    shutil.copy(SAMPLES / "solvay_1927.jpg", photos)
    result = run_predict(photos, "--json", "--out", tmp_path / "out", "--weights", random_weights)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_name = {line["image"].split("/")[-1]: line for line in lines}
    assert set(by_name) == {"astronaut.jpg", "solvay_1927.jpg"}
    (astronaut,) = by_name["astronaut.jpg"]["faces"]
    x1, y1, x2, y2 = astronaut["box"]
    assert 160 < (x1 + x2) / 2 < 290 and 50 < (y1 + y2) / 2 < 190
    assert set(astronaut) >= {"box", "score", "age", "gender", "p_male"}
    assert astronaut["gender"] in ("male", "female") and 0 <= astronaut["p_male"] <= 1
    assert 0 <= astronaut["age"] <= 100
    assert len(by_name["solvay_1927.jpg"]["faces"]) >= 20
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["astronaut_annotated.jpg",
                                                                    "solvay_1927_annotated.jpg"]


def test_predict_on_a_real_dataset_face(tmp_path, random_weights):
    require_torch()  # --backend torch
    face = sorted(shared("utkface/crop_part1").glob("*.jpg"))[100]
    import cv2

    result = run_predict(face, "--json", "--weights", random_weights, "--detector", "scrfd", "--backend", "torch")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["image"] == str(face)
    (found,) = answer["faces"]  # a UTKFace crop: one face, filling most of the photo
    height, width = cv2.imread(str(face)).shape[:2]
    x1, y1, x2, y2 = found["box"]
    assert x2 - x1 > width / 2 and width / 4 < (x1 + x2) / 2 < width * 3 / 4, found
    assert height / 4 < (y1 + y2) / 2 < height * 3 / 4, found


def test_corrupt_and_missing_files_are_named_and_the_rest_still_processed(tmp_path, random_weights):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes((SAMPLES / "astronaut.jpg").read_bytes()[:300])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    result = run_predict(corrupt, SAMPLES / "astronaut.jpg", tmp_path / "missing.jpg", empty, "--json",
                         "--weights", random_weights)
    assert result.returncode == 1
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(SAMPLES / "astronaut.jpg")]
    for name in ("corrupt.jpg", "missing.jpg", "empty.png"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_reads_video_files(tmp_path, random_weights):
    import cv2

    frame = cv2.resize(cv2.imread(str(SAMPLES / "astronaut.jpg")), (320, 320))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 320))
    for _ in range(4):
        writer.write(frame)
    writer.release()
    result = run_predict(video, "--json", "--every", "2", "--weights", random_weights)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == [f"{video}#frame=0", f"{video}#frame=2"]
    assert all(len(line["faces"]) == 1 for line in lines)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "swap", "no_card", "wrong_architecture", "bad_card",
                                    "bad_crop_scale", "other_crop_size"])
def test_bad_weight_files_give_a_clear_error(tmp_path, random_weights, damage):
    weights = tmp_path / "my_model.pt"
    shutil.copy(random_weights, weights)
    shutil.copy(random_weights.with_suffix(".json"), weights.with_suffix(".json"))
    card = json.loads(weights.with_suffix(".json").read_text())
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":
        weights.write_bytes(b"not a state dict at all")
    elif damage == "swap":
        torch = require_torch()
        from agegender_ros.model import create_model

        other = create_model("paper")
        torch.save(other.state_dict(), weights)  # a valid file, but not the one the card describes
    elif damage == "no_card":
        weights.with_suffix(".json").unlink()
    elif damage == "wrong_architecture":
        # A consistent file + card pair whose tensors don't fit the named architecture.
        require_torch()
        from agegender_ros.model import create_model
        from agegender_ros.weights import save_weights

        save_weights(create_model("ssrnet"), weights, {"architecture": "ssrnet", "model_args": {}})
        card = json.loads(weights.with_suffix(".json").read_text())
        card["architecture"] = "paper"
        weights.with_suffix(".json").write_text(json.dumps(card))
    elif damage == "bad_card":
        weights.with_suffix(".json").write_text("{broken")
    elif damage in ("bad_crop_scale", "other_crop_size"):  # the runtime could not crop faces as in training
        card["crop"] = {**card["crop"], **({"scale": "wide"} if damage == "bad_crop_scale" else {"size": 96})}
        weights.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(WeightsError) as error:
        load_model(weights)
    assert weights.stem in str(error.value)  # names the .pt or its .json card
    result = run_predict(SAMPLES / "astronaut.jpg", "--weights", weights)
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_missing_default_weights_explain_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEGENDER_WEIGHTS", str(tmp_path / "none.pt"))
    with pytest.raises(WeightsError, match="make weights"):
        load_model()


def test_faces_are_cropped_at_the_crop_scale_the_weights_were_trained_at(tmp_path, random_weights):
    import cv2
    import numpy as np

    from agegender_ros import faces
    from agegender_ros.estimator import Estimator
    from agegender_ros.model_io import normalise_crops
    from agegender_ros.weights import LEGACY_CROP_SCALE, crop_scale

    card = json.loads(random_weights.with_suffix(".json").read_text())
    assert crop_scale(card) == faces.CROP_SCALE == Estimator.create(weights=str(random_weights)).crop_scale
    weights = tmp_path / "older.pt"
    shutil.copy(random_weights, weights)
    if "onnx" in card:  # the shipped weights (runtime-only installs) name their ONNX export beside them
        shutil.copy(random_weights.parent / card["onnx"]["file"], tmp_path / card["onnx"]["file"])
    del card["crop"]  # cards written before the runtime read the crop scale: all trained at 3.2
    weights.with_suffix(".json").write_text(json.dumps(card))
    assert Estimator.create(weights=str(weights)).crop_scale == LEGACY_CROP_SCALE == 3.2

    class Recorder:  # a backend that keeps what it was given
        name = "recorder"

        def __call__(self, batch):
            self.batch = batch
            n = len(batch)
            return np.full(n, 30.0, np.float32), np.full(n, 0.5, np.float32), np.zeros(n, np.float32)

    detector = faces.create_detector("auto")
    frame = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    detection = detector.detect(frame)[0]
    batches = {}
    for scale in (2.6, 3.2):
        recorder = Recorder()
        Estimator(detector, recorder, crop_scale=scale)(frame)
        batches[scale] = recorder.batch
        expected = faces.align_crop(frame, detection, crop_scale=scale)
        np.testing.assert_allclose(batches[scale][0], normalise_crops(expected[None])[0], atol=1e-6)
    assert not np.allclose(batches[2.6], batches[3.2])


def test_flip_tta_averages_a_face_with_its_mirror_image(random_weights):
    import numpy as np

    require_torch()
    from agegender_ros.estimator import Estimator
    from agegender_ros.torch_backend import TorchBackend
    from agegender_ros.faces import FaceDetection

    crops = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    boxes = [FaceDetection(np.array([0, 0, 64, 64], np.float32), 0.9) for _ in crops]
    model, _ = load_model(random_weights)
    plain = Estimator(None, TorchBackend(model))
    flipped = Estimator(None, TorchBackend(model), flip_tta=True)
    faces = flipped.estimate_crops(crops, boxes)
    mirrored = flipped.estimate_crops(np.ascontiguousarray(crops[:, :, ::-1]), boxes)
    for a, b, one, other in zip(faces, mirrored, plain.estimate_crops(crops, boxes),
                                plain.estimate_crops(np.ascontiguousarray(crops[:, :, ::-1]), boxes)):
        assert abs(a.age - b.age) < 1e-3 and abs(a.p_male - b.p_male) < 1e-5
        assert abs(a.age - (one.age + other.age) / 2) < 1e-3


def test_an_image_that_decompresses_to_gigabytes_is_refused_per_file(tmp_path, random_weights):
    """A 16000 x 16000 PNG of a few hundred KB (768 MB decoded): refused from its header, named with its size and
    the limit, and the other photos are still processed; --max-image-pixels raises the limit."""
    from test_ros_image import huge_png

    huge = tmp_path / "huge.png"
    huge.write_bytes(huge_png())
    timer = ["/usr/bin/time", "-f", "maxrss_kib=%M"] if Path("/usr/bin/time").is_file() else []  # GNU time
    result = subprocess.run(timer + [sys.executable, "-m", "agegender_ros.cli",
                             "predict", str(huge), str(SAMPLES / "astronaut.jpg"), "--json", "--weights",
                             str(random_weights)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert f"error: {huge}: image 16000x16000 (256,000,000 pixels) is larger than the 100,000,000 pixels " \
           "accepted: not decoded" in result.stderr
    assert "1 input(s) failed" in result.stderr
    (answer,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert answer["image"] == str(SAMPLES / "astronaut.jpg") and len(answer["faces"]) == 1
    if timer:
        peak_mib = int(result.stderr.rsplit("maxrss_kib=", 1)[1].split()[0]) / 1024
        assert peak_mib < 700, f"predict peaked at {peak_mib:.0f} MiB: the PNG was decoded"
    small = run_predict(SAMPLES / "astronaut.jpg", "--json", "--weights", random_weights,
                        "--max-image-pixels", "1000")
    assert small.returncode == 1 and "is larger than the 1,000 pixels accepted" in small.stderr


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from types import SimpleNamespace

    pytest.importorskip("tqdm", reason="tqdm is not installed (the runtime install has no progress bar)")

    from agegender_ros import cli

    sources = [("image", SAMPLES / "astronaut.jpg"), ("image", SAMPLES / "solvay_1927.jpg")]
    args = SimpleNamespace(no_progress=False)
    assert cli._progress(sources, args) is sources  # stderr is not a terminal here

    class Terminal:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = cli._progress(sources, args)
    assert list(bar) == sources
    bar.close()
    assert "predict:" in terminal.text and "/2 [" in terminal.text
    assert cli._progress(sources, SimpleNamespace(no_progress=True)) is sources
    one = sources[:1]
    assert cli._progress(one, args) is one  # one input: no bar


# --------------------------------------------------------------------------------------------------------------
# Detector `auto` without SCRFD (issue 31): said once on stderr, with the reason and the command that fetches it


def test_auto_without_scrfd_says_once_which_detector_why_and_how_to_fetch_it(tmp_path, random_weights):
    missing = tmp_path / "no_such_dir" / "scrfd.onnx"
    env = dict(os.environ, AGEGENDER_SCRFD_ONNX=str(missing))
    # Two photos and a folder: three estimator inputs, one process, one notice.
    result = subprocess.run([sys.executable, "-m", "agegender_ros.cli", "predict", str(SAMPLES / "astronaut.jpg"),
                             str(SAMPLES / "solvay_1927.jpg"), str(SAMPLES), "--weights", str(random_weights)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    notices = [line for line in result.stderr.splitlines() if "face detector: auto took" in line]
    assert len(notices) == 1, result.stderr
    (notice,) = notices
    taken = notice.split("auto took ", 1)[1].split(",", 1)[0]
    assert taken in ("blazeface", "haar"), notice
    assert f"not scrfd (the most accurate): its weights are not at {missing} (AGEGENDER_SCRFD_ONNX)" in notice
    assert notice.rstrip().endswith("fetch-detector"), notice  # the default path: no --out needed
    # The command it gives is one this interpreter can run.
    command = notice.split("Get it with: ", 1)[1]
    assert command == "agegender fetch-detector" or command.endswith(" -m agegender_ros.cli fetch-detector"), notice
    # Without -v nothing else about detectors is logged, and stdout holds only the answers.
    assert "agegender_ros.faces" not in result.stdout and "fetch-detector" not in result.stdout


def test_no_notice_when_auto_gets_scrfd_or_a_detector_is_named(tmp_path, random_weights):
    from agegender_ros.faces import DetectorUnavailable, ScrfdDetector

    try:
        ScrfdDetector()
    except DetectorUnavailable as error:
        pytest.skip(f"SCRFD is not installed here ({error})")
    for options in ([], ["--detector", "haar"]):
        env = dict(os.environ)
        if options:  # a named detector never falls back, so nothing is said even without SCRFD
            env["AGEGENDER_SCRFD_ONNX"] = str(tmp_path / "missing.onnx")
        result = subprocess.run([sys.executable, "-m", "agegender_ros.cli", "predict", str(SAMPLES / "astronaut.jpg"),
                                 "--weights", str(random_weights), *options],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        assert "face detector" not in result.stderr and "fetch-detector" not in result.stderr, result.stderr
