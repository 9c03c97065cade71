"""training/: preprocessing cache, loss, augmentation, protocols, exact resume after kill -9, and the commands."""
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import shared
from training import cache as cache_module
from training.augment import augment_batch
from training.checkpoints import data_fingerprint, relative_face_names
from training.datasets import load_records
from training.losses import multitask_loss
from training.protocols import folds
from training.train import TrainConfig
from agegender_ros import faces
from agegender_ros.model import age_bin_centres, create_model, normalise_crops_tensor


def agegender(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "agegender_ros.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


# --- cache ------------------------------------------------------------------------------------------------------


def test_cache_stores_context_crops_reports_failures_and_keys_on_settings(tmp_path, morph_folder):
    folder = tmp_path / "morph"
    shutil.copytree(morph_folder, folder)
    files = sorted(folder.iterdir())
    for extra in files[12:]:
        extra.unlink()
    files[0].write_bytes(b"\xff\xd8 truncated jpeg")
    records, _ = load_records("morph2", folder)
    data = cache_module.load_or_build("morph2", str(folder), records, progress=False)
    assert data.crops.shape == (11, 80, 80, 3) and data.crops.dtype == np.uint8
    assert data.failed == [(str(files[0]), "not a readable image (corrupt, truncated or unsupported format)")]
    assert data.detected.sum() >= 10
    cached = list(Path(os.environ["AGEGENDER_CACHE"]).glob("**/*.npz"))
    key = cache_module.cache_key("morph2", str(folder), records, "scrfd")
    assert cache_module.cache_key("morph2", str(folder), records, "scrfd", faces.CROP_SCALE + 0.1) != key
    assert cache_module.cache_key("morph2", str(folder), records, "haar") != key
    assert cached


def test_the_cache_is_reused_from_another_working_directory_and_names_files_as_the_caller_does(
        tmp_path, morph_folder, monkeypatch):
    folder = tmp_path / "data" / "morph"
    folder.parent.mkdir()
    shutil.copytree(morph_folder, folder)
    for extra in sorted(folder.iterdir())[6:]:
        extra.unlink()
    broken = sorted(folder.iterdir())[0]
    broken.write_bytes(b"not an image")
    monkeypatch.chdir(tmp_path)
    built = cache_module.load_or_build("morph2", "data/morph", load_records("morph2", "data/morph")[0],
                                       progress=False)
    stored = set(Path(os.environ["AGEGENDER_CACHE"]).glob("**/*.npz"))
    elsewhere = tmp_path / "another" / "checkout"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)

    def no_rebuild(*args):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache_module, "get_context", no_rebuild)
    records, _ = load_records("morph2", "../../data/morph")
    assert records[0].path == str(elsewhere / "../../data/morph" / broken.name)  # as the adapter names them
    reused = cache_module.load_or_build("morph2", "../../data/morph", records, progress=False)
    np.testing.assert_array_equal(reused.crops, built.crops)
    assert list(reused.paths) == [r.path for r in records[1:]]
    assert reused.failed == [(records[0].path, built.failed[0][1])]
    assert set(Path(os.environ["AGEGENDER_CACHE"]).glob("**/*.npz")) == stored


def test_augmentation_off_is_the_inference_crop():
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 80, 80, 3), dtype=np.uint8))
    x = augment_batch(crops, None, enabled=False)
    np.testing.assert_allclose(x.numpy(), normalise_crops_tensor(crops[:, 8:72, 8:72]).numpy(), atol=1e-4)
    augmented = augment_batch(crops, torch.Generator().manual_seed(1), enabled=True)
    assert augmented.shape == (2, 3, 64, 64) and torch.isfinite(augmented).all()


def test_loss_weights_heads_and_skips_unknown_genders():
    outputs = {"final_age": torch.tensor([30.0, 50.0]), "final_gender": torch.tensor([0.0, 100.0]),
               "low_age": torch.tensor([20.0, 40.0]), "low_gender": torch.tensor([0.0, 0.0])}
    ages, genders = torch.tensor([30.0, 40.0]), torch.tensor([1, -1])
    config = TrainConfig(loss_weights={"final": 1.0, "low": 0.5, "virtual": 0.25}, age_loss_scale=0.1)
    total, parts = multitask_loss(outputs, ages, genders, config)
    bce_half = float(np.log(2))  # logit 0 on a male face; the unknown face's logit 100 is ignored
    assert parts["final_age"] == pytest.approx(0.5) and parts["low_age"] == pytest.approx(0.5)
    assert parts["final_gender"] == pytest.approx(bce_half) and parts["low_gender"] == pytest.approx(bce_half)
    assert total.item() == pytest.approx(1.0 * (0.5 + bce_half) + 0.5 * (0.5 + bce_half))


def test_protocol_folds_are_disjoint_and_subject_exclusive_when_asked(morph_folder):
    records, _ = load_records("morph2", morph_folder)
    data = cache_module.PreprocessedSet(np.zeros((len(records), 1, 1, 3), np.uint8),
                                        np.array([r.age for r in records], np.float32),
                                        np.array([r.gender for r in records], np.int8),
                                        np.array([r.subject for r in records]), np.array([r.path for r in records]),
                                        np.array([r.split for r in records]), np.ones(len(records), bool),
                                        np.zeros((len(records), 4), np.float32), [])
    for protocol in ("kfold5", "kfold5-subject"):
        fold_list = folds(protocol, data)
        assert len(fold_list) == 5
        tests = np.concatenate([test for _, _, test in fold_list])
        assert sorted(tests) == list(range(len(records)))
        for _, train, test in fold_list:
            assert not set(train) & set(test)
            if protocol == "kfold5-subject":
                assert not set(data.subjects[train]) & set(data.subjects[test])
    assert len(folds("lopo", data)) == len(set(data.subjects))
    with pytest.raises(ValueError, match="no official"):
        folds("official", data)


# --- trainer: exact resume after kill -9 ------------------------------------------------------------------------


def test_resume_after_kill_9_ends_with_the_same_metrics(tmp_path, morph_folder):
    common = ["train", "--dataset", "morph2", "--root", morph_folder, "--epochs", "4", "--batch-size", "8",
              "--threads", "1", "--no-progress", "--seed", "3"]
    env = dict(os.environ)
    full = agegender(*common, "--out", tmp_path / "full", env=env)
    assert full.returncode == 0, full.stderr
    interrupted = subprocess.Popen([sys.executable, "-m", "agegender_ros.cli", *map(str, common), "--out",
                                    tmp_path / "killed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=env)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and time.time() < deadline and interrupted.poll() is None:
        time.sleep(0.005)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.wait()
    assert interrupted.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "metrics.json").exists(), "the run finished before it could be killed"
    resumed = agegender(*common, "--out", tmp_path / "killed", "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert len(b["history"]) == 4
    for key in ("mae", "gender_acc", "ca3", "ca5"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-6)
    for entry_a, entry_b in zip(a["history"], b["history"]):
        assert entry_b["train_loss"] == pytest.approx(entry_a["train_loss"], rel=1e-6)
    # The run folder holds what a user needs: weights + card, TensorBoard logs, predictions.
    card = json.loads((tmp_path / "killed" / "model.json").read_text())
    assert card["architecture"] == "paper" and "Research use only" in card["licence"]
    assert list((tmp_path / "killed" / "tensorboard").iterdir())


# --- commands ---------------------------------------------------------------------------------------------------


def test_evaluate_json_on_a_flat_folder_of_morph_and_utk_named_files(tmp_path, morph_folder, random_weights):
    result = agegender("evaluate", "--root", morph_folder, "--weights", random_weights, "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 240 and 230 <= metrics["detected"] <= 240 and metrics["dataset"] == "morph2"
    assert {"mae", "gender_acc", "ca3", "ca5"} <= set(metrics)
    # Per decade of true age: faces, MAE and bias (mean signed error), consistent with the totals.
    decades = metrics["by_decade"]
    assert sum(row["n"] for row in decades.values()) == 240
    assert sum(row["mae"] * row["n"] for row in decades.values()) / 240 == pytest.approx(metrics["mae"], rel=1e-6)
    assert all(abs(row["bias"]) <= row["mae"] + 1e-9 for row in decades.values())
    table = agegender("evaluate", "--root", morph_folder, "--weights", random_weights)
    assert table.returncode == 0 and "ages     faces    MAE   bias (+ = predicted too old)" in table.stdout
    utk = tmp_path / "utk"
    utk.mkdir()
    for path in sorted(shared("utkface/crop_part1").glob("*.jpg"))[:30]:
        shutil.copy(path, utk)
    (utk / "5_0_0_20170101000000000.jpg.chip.jpg").write_bytes(b"garbage")
    result = agegender("evaluate", "--root", utk, "--weights", random_weights, "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert metrics["n"] == 30 and metrics["failed"] == 1 and metrics["dataset"] == "utkface"
    assert "5_0_0_20170101000000000.jpg.chip.jpg" in result.stderr


def test_wrong_layout_says_what_was_expected(tmp_path):
    (tmp_path / "random.txt").write_text("x")
    result = agegender("evaluate", "--dataset", "aaf", "--root", tmp_path, "--json")
    assert result.returncode == 2
    assert "aglined faces" in result.stderr and "Traceback" not in result.stderr


def test_protocol_and_report_commands(tmp_path, morph_folder):
    result = agegender("protocol", "--dataset", "morph2", "--root", morph_folder, "--protocol", "kfold5-subject",
                       "--max-folds", "2", "--epochs", "1", "--batch-size", "16", "--no-progress", "--json",
                       "--out", tmp_path / "protocol")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert [fold["fold"] for fold in report["folds"]] == ["fold0", "fold1"]
    assert report["mean"]["folds"] == 2 and report["mean"]["mae"] > 0
    result = agegender("report", tmp_path / "protocol", "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert "| protocol | paper |" in result.stdout and "morph2" in result.stdout
    assert "Paper's numbers for morph2" in result.stdout  # quoted beside the runs of that dataset
    for plot in ("ca_curve.png", "mae_by_age.png", "gender_confusion.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 1000
    # A protocol the dataset cannot follow (MORPH-II has no official split) is a one-line error, not a traceback.
    unsplit = agegender("protocol", "--dataset", "morph2", "--root", morph_folder, "--protocol", "official",
                        "--epochs", "1", "--no-progress", "--out", tmp_path / "official")
    assert unsplit.returncode == 2 and unsplit.stderr.startswith("error: morph2:"), unsplit.stderr
    assert "Traceback" not in unsplit.stderr


def test_init_weights_must_match_the_model(tmp_path, morph_folder, random_weights):
    result = agegender("train", "--dataset", "morph2", "--root", morph_folder, "--protocol", "kfold5",
                       "--model", "ssrnet", "--init-weights", random_weights, "--epochs", "1", "--no-progress",
                       "--out", tmp_path / "run")
    assert result.returncode == 2
    assert "is a 'paper' model, not 'ssrnet'" in result.stderr
    # A missing weight file is a one-line error naming the option and the file, from train and protocol alike.
    for command in ("train", "protocol"):
        missing = agegender(command, "--dataset", "morph2", "--root", morph_folder, "--protocol", "kfold5",
                            "--init-weights", tmp_path / "nope.pt", "--epochs", "1", "--no-progress",
                            "--out", tmp_path / command)
        assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
        assert missing.stderr.startswith(f"error: --init-weights {tmp_path / 'nope.pt'}: "), missing.stderr


# --- bad files, recipe options, FG-NET -----------------------------------------------------------------------------


def test_truncated_jpeg_is_reported_once_and_skipped_and_the_run_goes_on(tmp_path, morph_folder):
    folder = tmp_path / "morph"
    shutil.copytree(morph_folder, folder)
    files = sorted(folder.iterdir())[:30]
    for extra in sorted(folder.iterdir())[30:]:
        extra.unlink()
    # Cut real JPEGs short: one warning naming each file, and the run goes on without them.
    whole = files[3].read_bytes()
    files[3].write_bytes(whole[:-2])
    files[4].write_bytes(files[4].read_bytes()[: len(files[4].read_bytes()) // 2])
    result = agegender("train", "--dataset", "morph2", "--root", folder, "--protocol", "kfold5", "--epochs", "1",
                       "--batch-size", "8", "--no-progress", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    for broken in files[3:5]:
        warnings = [line for line in result.stderr.splitlines() if str(broken) in line]
        assert len(warnings) == 1 and "truncated" in warnings[0] and warnings[0].endswith("(skipped)"), warnings
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_images"] + metrics["val_images"] == 28
    # The CLI's predict reads with the same reader and names the file.
    # Haar is the quickest to start; where it is unavailable (OpenCV 5, e.g. a GPU machine's image), SCRFD.
    try:
        detector = faces.create_detector("haar").name
    except faces.DetectorUnavailable:
        detector = "scrfd"
    result = agegender("predict", files[3], "--detector", detector, "--backend", "torch")
    assert result.returncode == 1  # predict reports each failed input and goes on with the others
    assert f"{files[3]}: " in result.stderr and "truncated" in result.stderr and "Traceback" not in result.stderr


def test_reader_catches_a_truncated_jpeg_that_opencv_decodes(tmp_path, monkeypatch):
    # OpenCV 4.14 refuses a JPEG cut short, but older builds (JetPack's) decode it with a grey lower part.
    path = tmp_path / "cut.jpg"
    ok, data = cv2.imencode(".jpg", np.full((32, 32, 3), 128, np.uint8))
    path.write_bytes(data.tobytes()[:-2])
    monkeypatch.setattr(faces.cv2, "imdecode", lambda *_: np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(faces.ImageReadError, match="truncated JPEG") as error:
        faces.read_image(path)
    assert error.value.path == str(path)
    path.write_bytes(data.tobytes())
    assert faces.read_image(path).shape == (32, 32, 3)


def test_label_distribution_model_keeps_six_outputs_and_the_parameter_budget():
    from agegender_ros.model import count_parameters
    from training.losses import distribution_loss, label_distribution

    def label_distribution_loss(logits, ages):
        return distribution_loss(logits, label_distribution(ages, logits.shape[1]))

    model = create_model("paper", age_bins=12).eval()
    assert abs(count_parameters(model) - 99_200) <= 0.02 * 99_200
    outputs = model(torch.zeros(4, 3, 64, 64))
    assert sorted(k for k in outputs if not k.endswith("_logits")) == sorted(
        f"{h}_{t}" for h in ("final", "virtual", "low") for t in ("age", "gender"))
    assert all(0 <= float(v) <= 100 for v in outputs["final_age"].detach())
    # The loss is smallest for logits that put the mass around the true age.
    ages = torch.tensor([5.0, 40.0, 80.0])
    centres = torch.linspace(0, 100, 12)
    good = -(centres[None] - ages[:, None]) ** 2 / 50
    assert label_distribution_loss(good, ages) < label_distribution_loss(good.flip(1), ages)
    assert label_distribution_loss(good, ages) >= 0
    config = TrainConfig(age_bins=12)
    loss, parts = multitask_loss(outputs, torch.full((4,), 30.0), torch.tensor([0, 1, -1, 1]), config)
    assert "final_age_distribution" in parts and torch.isfinite(loss)


def test_width_scales_the_paper_net_and_its_card_rebuilds_it(tmp_path, morph_folder):
    from agegender_ros.model import count_parameters
    from agegender_ros.weights import load_model, save_weights

    paper, wide = create_model("paper", age_bins=12), create_model("paper", age_bins=12, width=2).eval()
    assert 3.5 < count_parameters(wide) / count_parameters(paper) < 4.5  # channels x2: parameters about x4
    outputs = wide(torch.rand(2, 3, 64, 64))
    assert set(outputs) == set(paper.eval()(torch.rand(2, 3, 64, 64)))
    config = TrainConfig(age_bins=12, width=2.0)
    assert config.model_args() == {"age_bins": 12, "width": 2.0} and TrainConfig().model_args() == {}
    save_weights(wide, tmp_path / "wide.pt", {"architecture": "paper", "model_args": config.model_args()})
    loaded, _ = load_model(tmp_path / "wide.pt")
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(loaded(x)["final_age"], wide(x)["final_age"])
    with pytest.raises(ValueError, match="width is an option of the paper net"):
        TrainConfig(model="ssrnet", width=2.0).model_args()
    bad = agegender("train", "--dataset", "morph2", "--root", morph_folder, "--width", "0", "--out", tmp_path / "r")
    assert bad.returncode == 2 and "--width: expected a positive channel multiplier" in bad.stderr


def test_camera_augmentation_is_seeded_and_changes_faces():
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (64, 80, 80, 3), dtype=np.uint8))
    first = augment_batch(crops, torch.Generator().manual_seed(5), True, camera=True)
    again = augment_batch(crops, torch.Generator().manual_seed(5), True, camera=True)
    plain = augment_batch(crops, torch.Generator().manual_seed(5), True, camera=False)
    assert first.shape == (64, 3, 64, 64) and torch.equal(first, again)
    assert torch.isfinite(first).all() and not torch.equal(first, plain)
    # A strength below 1 degrades fewer of the faces; 0 none (the plain augmentation, same random stream).
    def faces_changed(out: torch.Tensor) -> int:
        return int(((out - plain).abs().flatten(1).amax(1) > 1e-6).sum())

    changed = {strength: faces_changed(augment_batch(crops, torch.Generator().manual_seed(5), True, camera=strength))
               for strength in (1.0, 0.5, 0.0)}
    assert changed[1.0] == faces_changed(first)
    assert changed[1.0] > changed[0.5] > 0 and changed[0.0] == 0


def test_camera_augment_strength_is_checked(tmp_path, morph_folder):
    bad = agegender("train", "--dataset", "morph2", "--root", morph_folder, "--camera-augment", "1.5",
                    "--out", tmp_path / "r")
    assert bad.returncode == 2 and "--camera-augment: expected a share between 0 and 1, got 1.5" in bad.stderr


def test_flip_averaging_is_symmetric(random_weights):
    from agegender_ros.weights import load_model
    from training.train import predict_crops

    model, _ = load_model(random_weights)
    crops = np.random.default_rng(1).integers(0, 256, (6, 80, 80, 3), dtype=np.uint8)
    age, p_male, _ = predict_crops(model, crops, torch.device("cpu"), flip=True)
    mirrored_age, mirrored_p, _ = predict_crops(model, np.ascontiguousarray(crops[:, :, ::-1]), torch.device("cpu"),
                                                flip=True)
    assert np.allclose(age, mirrored_age, atol=1e-3) and np.allclose(p_male, mirrored_p, atol=1e-4)


def test_scoring_runs_without_tf32_and_restores_it(random_weights, monkeypatch):
    # Recorded scores must be what `agegender evaluate` gives on a CPU: no TF32 rounding while scoring on a GPU.
    from agegender_ros.weights import load_model
    from training.train import predict_crops

    model, _ = load_model(random_weights)
    seen = []
    predict = model.predict
    monkeypatch.setattr(model, "predict", lambda x: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)) or predict(x))
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32  # properties: no monkeypatch
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        predict_crops(model, np.zeros((3, 80, 80, 3), np.uint8), torch.device("cpu"))
        assert seen == [(False, False)]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


FREED_MEMORY_PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from training.train import keep_freed_memory
    assert keep_freed_memory()
def step():  # freed blocks of a training step's sizes (a batch's activations are a few MB to 25 MB)
    blocks = [np.ones(size << 20, np.uint8) for size in (3, 6, 12, 24, 6, 3)]
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc's malloc")
def test_training_keeps_freed_memory_instead_of_faulting_it_in_again():
    """Why CPU training steps run ~10% faster: memory freed by one step is reused by the next, not handed back to
    the kernel and page-faulted in again (counted as minor page faults; no timing)."""
    faults = {}
    for mode in ("default", "keep"):
        run = subprocess.run([sys.executable, "-c", FREED_MEMORY_PROBE, mode], capture_output=True, text=True,
                             timeout=120, cwd=Path(__file__).resolve().parents[1])
        assert run.returncode == 0, run.stderr
        faults[mode] = int(run.stdout.split()[-1])
    assert faults["default"] > 10_000  # 20 steps of 54 MB: glibc's defaults fault much of it in every step
    assert faults["keep"] < faults["default"] / 10


def test_a_step_the_gradient_scaler_skips_leaves_the_schedule_where_it_is():
    # float16 training on CUDA: the scaler skips overflowing steps; the one-cycle schedule must not run ahead.
    import warnings

    from training.train import optimizer_step

    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10)
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # the CUDA scaler's logic, runnable here
    weight, lr = layer.weight.detach().clone(), scheduler.get_last_lr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Detected call of lr_scheduler.step() before optimizer.step()"
        scaler.scale(layer(torch.tensor([[float("inf"), 1.0]])).sum()).backward()
        assert not optimizer_step(optimizer, scheduler, scaler)
        assert torch.equal(layer.weight, weight) and scheduler.get_last_lr() == lr
        optimizer.zero_grad()
        scaler.scale(layer(torch.ones(1, 2)).sum()).backward()
        assert optimizer_step(optimizer, scheduler, scaler)
    assert not torch.equal(layer.weight, weight) and scheduler.get_last_lr() != lr
    disabled = torch.amp.GradScaler("cpu", enabled=False)  # the CPU's training path: every step counts
    optimizer.zero_grad()
    layer(torch.ones(1, 2)).sum().backward()
    assert optimizer_step(optimizer, scheduler, disabled)



@pytest.mark.parametrize("total_steps", [1, 2, 5, 10, 20, 450])
def test_the_learning_rate_cycle_runs_for_any_number_of_steps(total_steps):
    from training.train import one_cycle

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = one_cycle(optimizer, 1e-3, total_steps, 0.1)  # 10 steps: a one-step warm-up
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert max(rates) <= 1e-3 + 1e-12
    if total_steps >= 10:  # a warm-up of at least a step starts at lr / 20
        assert rates[0] <= 1e-3 / 20 + 1e-12
    if total_steps >= 20:  # warms up to the peak, then anneals
        assert max(rates) > 0.99e-3 and rates[-1] < rates[len(rates) // 2]

def test_fgnet_lopo_smoke_run_through_the_cli(tmp_path):
    root = shared("fgnet")
    result = agegender("protocol", "--dataset", "fgnet", "--root", root, "--protocol", "lopo", "--max-folds", "2",
                       "--epochs", "1", "--batch-size", "32", "--no-progress", "--json", "--out", tmp_path / "lopo")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert [fold["fold"] for fold in report["folds"]] == ["subject-001", "subject-002"]
    photos = [path for path in (root / "images").iterdir() if path.name[:4] in ("001A", "002A")]
    assert sum(fold["n"] for fold in report["folds"]) == len(photos)
    assert report["mean"]["mae_pooled"] > 0
    assert report["wall_s"] > 0 and report["images"] == 1_002


def test_train_scores_unseen_datasets_into_metrics_and_model_card(tmp_path, morph_folder):
    result = agegender("train", "--dataset", "morph2", "--root", morph_folder, "--protocol", "kfold5", "--epochs", "1",
                       "--batch-size", "16", "--no-progress", "--unseen", f"morph2={morph_folder}",
                       "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["metrics_unseen"]["morph2"]["n"] == 240
    assert card["recipe"]["epochs"] == 1 and "morph2" in card["licence"]
    from agegender_ros.weights import load_model

    load_model(tmp_path / "run" / "model.pt")  # the updated card still matches the weights
    result = agegender("train", "--dataset", "morph2", "--root", morph_folder, "--unseen", "nonsense",
                       "--out", tmp_path / "bad")
    assert result.returncode == 2 and "--unseen 'nonsense'" in result.stderr


def test_tight_crop_smears_the_margin_of_the_chosen_faces_only():
    from training.augment import tight_crop

    grid = torch.nn.functional.affine_grid(torch.eye(2, 3).repeat(4, 1, 1) * 0.8, (4, 3, 64, 64), align_corners=False)
    unchanged = tight_crop(grid, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(unchanged, grid)
    smeared = tight_crop(grid, 1.0, torch.Generator().manual_seed(0))
    assert (smeared.abs() <= 0.85 + 1e-6).all() and (smeared.abs().amax(dim=(1, 2, 3)) >= 0.45 - 1e-6).all()
    # Inside the box nothing moves: the face itself is the same.
    centre = grid[:, 24:40, 24:40]
    assert torch.equal(smeared[:, 24:40, 24:40], centre)
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, 80, 80, 3), dtype=np.uint8))
    x = augment_batch(crops, torch.Generator().manual_seed(2), True, tight_crop_p=1.0)
    assert x.shape == (8, 3, 64, 64) and torch.isfinite(x).all()
    assert not torch.equal(x, augment_batch(crops, torch.Generator().manual_seed(2), True, tight_crop_p=0.0))


def test_age_balance_draws_rare_ages_more_often():
    from training.train import age_sampling_weights

    ages = np.array([25.0] * 90 + [70.0] * 10)  # a common and a rare 5-year bin
    assert torch.allclose(age_sampling_weights(ages, 0.0), torch.ones(100, dtype=torch.float64))
    full = age_sampling_weights(ages, 1.0)
    assert full.mean() == pytest.approx(1.0)
    assert full[:90].sum() == pytest.approx(full[90:].sum())  # power 1: each bin is drawn equally often
    half = age_sampling_weights(ages, 0.5)
    assert half[:90].sum() / half[90:].sum() == pytest.approx(3.0)  # sqrt(90) / sqrt(10)
    draws = torch.multinomial(full, 20_000, replacement=True, generator=torch.Generator().manual_seed(0))
    assert 0.45 < float((draws >= 90).float().mean()) < 0.55


def test_age_balanced_training_runs_and_is_recorded(tmp_path, morph_folder):
    common = ["train", "--dataset", "morph2", "--root", morph_folder, "--epochs", "1", "--batch-size", "8",
              "--threads", "1", "--no-progress"]
    result = agegender(*common, "--age-balance", "0.5", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["age_balance"] == 0.5
    bad = agegender(*common, "--age-balance", "2", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "--age-balance: expected a power between 0 and 1, got 2.0" in bad.stderr


def test_dataset_weight_draws_a_dataset_more_often_and_multiplies_with_age_balance():
    from training.train import TrainConfig, dataset_sampling_weights, sampling_weights_for

    sources = np.array(["aaf"] * 30 + ["fairface"] * 70)
    weights = dataset_sampling_weights(sources, {"fairface": 2.0})
    assert weights.mean() == pytest.approx(1.0)
    assert weights[30:].sum() / weights[:30].sum() == pytest.approx(140 / 30)  # 70 faces drawn twice as often
    with pytest.raises(ValueError, match="utkface not among the training datasets"):
        dataset_sampling_weights(sources, {"utkface": 2.0})
    with pytest.raises(ValueError, match="does not say which dataset"):
        dataset_sampling_weights(None, {"fairface": 2.0})

    ages = np.array([25.0] * 90 + [70.0] * 10)
    data = types.SimpleNamespace(sources=sources)
    assert sampling_weights_for(data, ages, TrainConfig()) is None  # the paper's: every face once per epoch
    both = sampling_weights_for(data, ages, TrainConfig(age_balance=1.0, dataset_weights={"fairface": 2.0}))
    expected = hand_computed_weights(ages, sources)
    assert torch.allclose(both / both.sum(), expected / expected.sum())


def hand_computed_weights(ages, sources):
    """By hand: 1 / (faces in the 5-year bin), times 2 for FairFace's faces."""
    counts = {25.0: 90, 70.0: 10}
    return torch.tensor([(2.0 if s == "fairface" else 1.0) / counts[a] for a, s in zip(ages, sources)],
                        dtype=torch.float64)


def test_sampling_and_label_distribution_options_are_recorded_and_checked(tmp_path, morph_folder):
    common = ["train", "--dataset", "morph2", "--root", morph_folder, "--epochs", "1", "--batch-size", "8",
              "--threads", "1", "--no-progress"]
    result = agegender(*common, "--dataset-weight", "morph2=3", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset_weights"] == {"morph2": 3.0}
    matched = agegender(*common, "--age-bins", "12", "--match-age-distribution-mean", "--out", tmp_path / "matched")
    assert matched.returncode == 0, matched.stderr
    assert json.loads((tmp_path / "matched" / "config.json").read_text())["match_age_distribution_mean"] is True
    bad = agegender(*common, "--match-age-distribution-mean", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "it needs --age-bins K" in bad.stderr
    for option, message in (("fairface=2", "'fairface' is not one of this run's --dataset (morph2)"),
                            ("morph2=x", "expected DATASET=W"), ("morph2=0", "expected a positive weight")):
        bad = agegender(*common, "--dataset-weight", option, "--out", tmp_path / "bad")
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_distillation_mixes_label_and_teacher_targets():
    outputs = {"final_age": torch.tensor([30.0, 50.0]), "final_gender": torch.tensor([0.0, 0.0])}
    ages, genders = torch.tensor([30.0, 40.0]), torch.tensor([1, -1])
    teacher = (torch.tensor([20.0, 50.0]), torch.tensor([1.0, 0.0]))
    labels_only = TrainConfig(loss_weights={"final": 1.0}, age_loss_scale=0.1)
    plain, _ = multitask_loss(outputs, ages, genders, labels_only)
    same, _ = multitask_loss(outputs, ages, genders, TrainConfig(loss_weights={"final": 1.0}, age_loss_scale=0.1,
                                                                  distill_weight=0.0), teacher)
    assert float(same) == pytest.approx(float(plain))
    full = TrainConfig(loss_weights={"final": 1.0}, age_loss_scale=0.1, distill_weight=1.0)
    _, parts = multitask_loss(outputs, ages, genders, full, teacher)
    assert parts["final_age"] == pytest.approx(0.5)  # |30-20| and |50-50| in decades, the labels ignored
    assert parts["final_gender"] == pytest.approx(float(np.log(2)))  # logit 0 against 1 and 0: both faces count
    half = TrainConfig(loss_weights={"final": 1.0}, age_loss_scale=0.1, distill_weight=0.5)
    total, parts = multitask_loss(outputs, ages, genders, half, teacher)
    assert parts["final_age"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.5)


def test_target_mixing_learns_the_mixed_age_where_the_loss_mix_is_flat():
    """A student halfway between label and teacher: the loss mix (a = 0.5) costs the same there as anywhere between
    them, the target mix is exactly right there; faces with one age learn it either way."""
    ages, genders = torch.tensor([30.0, 40.0, float("nan")]), torch.tensor([1, 0, 1])
    teacher = (torch.tensor([20.0, 50.0, 35.0]), torch.tensor([1.0, 0.0, 1.0]))

    def age_loss(predicted, mix):
        config = TrainConfig(loss_weights={"final": 1.0}, age_loss_scale=0.1, distill_weight=0.5,
                             distill_age_mix=mix)
        outputs = {"final_age": torch.tensor(predicted), "final_gender": torch.tensor([0.0, 0.0, 0.0])}
        return multitask_loss(outputs, ages, genders, config, teacher)[1]["final_age"]

    assert age_loss([25.0, 45.0, 35.0], "loss") == pytest.approx(age_loss([29.0, 41.0, 35.0], "loss"))
    assert age_loss([25.0, 45.0, 35.0], "loss") == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert age_loss([25.0, 45.0, 35.0], "target") == pytest.approx(0.0)
    assert age_loss([29.0, 41.0, 45.0], "target") == pytest.approx((0.4 + 0.4 + 1.0) / 3)
    with pytest.raises(ValueError, match="distill_age_mix 'average'"):
        age_loss([25.0, 45.0, 35.0], "average")


def test_teacher_age_distribution_mixes_into_the_label_distribution():
    """Label-distribution heads: a face with an age and a teacher distribution learns (1 - a) x Gaussian label +
    a x teacher's; a face with only one learns that one; none of it changes when no teacher gives a distribution."""
    from training.losses import label_distribution

    bins, a = 6, 0.25
    ages, genders = torch.tensor([30.0, float("nan"), 50.0, float("nan")]), torch.tensor([1, 1, 0, 0])
    taught = torch.softmax(torch.randn(4, bins, generator=torch.Generator().manual_seed(0)), 1)
    taught[2:] = float("nan")  # faces the teacher could not read
    teacher = (torch.tensor([32.0, 60.0, float("nan"), float("nan")]), torch.full((4,), 0.5), taught)
    logits = torch.randn(4, bins, generator=torch.Generator().manual_seed(1))
    outputs = {"final_age": torch.full((4,), 40.0), "final_age_logits": logits, "final_gender": torch.zeros(4)}
    config = TrainConfig(loss_weights={"final": 1.0}, age_loss_scale=0.1, distill_weight=a, age_bins=bins)
    label = label_distribution(torch.tensor([30.0, 50.0]), bins)
    expected_target = torch.stack([(1 - a) * label[0] + a * taught[0], taught[1], label[1]])
    log_p = torch.log_softmax(logits[:3], 1)
    expected = (expected_target * (expected_target.log() - log_p)).sum(1).mean()
    _, parts = multitask_loss(outputs, ages, genders, config, teacher)
    assert parts["final_age_distribution"] == pytest.approx(float(expected), rel=1e-5)
    # Without a teacher distribution: the label distribution of the faces with an age, exactly as before.
    _, plain = multitask_loss(outputs, ages, genders, config, teacher[:2])
    label_only = (label * (label.log() - torch.log_softmax(logits[[0, 2]], 1))).sum(1).mean()
    assert plain["final_age_distribution"] == pytest.approx(float(label_only), rel=1e-5)


def test_a_weight_file_teacher_gives_its_age_distribution_on_the_students_bins():
    """A wider net of ours as teacher: its heads' bin probabilities, weighted as its age weighs them, so the
    distribution's expectation is its predicted age, also after sharing them out onto a student's other bins."""
    from training.distill import batch_teacher_targets, online_teacher_targets

    torch.manual_seed(0)
    teacher = create_model("paper", age_bins=12, width=2).eval()
    x = torch.randn(6, 3, 64, 64)
    age, p_male, _ = teacher.predict(x)
    for bins in (12, 7):
        taught_age, taught_p, distribution = online_teacher_targets([teacher], x, bins)
        assert torch.allclose(taught_age, age) and torch.allclose(taught_p, p_male)
        assert distribution.shape == (6, bins) and torch.allclose(distribution.sum(1), torch.ones(6), atol=1e-5)
        assert torch.allclose((distribution * age_bin_centres(bins)).sum(1), age, atol=1e-3)
    assert len(online_teacher_targets([teacher], x, 0)) == 2  # a student without bins learns the ages only
    regressor = create_model("paper").eval()  # no bins: no distribution, so none from the pair either
    assert len(online_teacher_targets([teacher, regressor], x, 12)) == 2
    # With a registered teacher's cached answers too: one share per teacher, the distribution included.
    cached = (torch.full((10,), 20.0), torch.ones(10), torch.full((10, 12), 1 / 12))
    index = torch.arange(2, 8)
    mixed = batch_teacher_targets([teacher], x, cached, index, 12)
    own = online_teacher_targets([teacher], x, 12)
    assert len(mixed) == 3 and torch.allclose(mixed[0], (20.0 + own[0]) / 2)
    assert torch.allclose(mixed[2], (cached[2][index] + own[2]) / 2)
    assert len(batch_teacher_targets([regressor], x, cached, index, 12)) == 2


def test_distilled_training_runs_from_the_cli(tmp_path, morph_folder, random_weights):
    common = ["train", "--dataset", "morph2", "--root", morph_folder, "--epochs", "1", "--batch-size", "8",
              "--threads", "1", "--no-progress"]
    result = agegender(*common, "--teacher", f"{random_weights},{random_weights}", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["teacher"] == f"{random_weights},{random_weights}" and config["distill_weight"] == 0.5
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert [t["name"] for t in card["teachers"]] == [str(random_weights)] * 2
    assert card["teachers"][0]["distilled"] == "age, P(male), on each augmented batch"  # no age bins here
    assert f"Distilled from our own weights {random_weights}" in card["licence"]
    missing = agegender(*common, "--teacher", tmp_path / "nope.pt", "--out", tmp_path / "bad")
    assert missing.returncode == 2 and f"--teacher {tmp_path / 'nope.pt'}: no such weight file" in missing.stderr


def test_crop_scale_is_trained_recorded_and_honoured_by_evaluate_resume_and_teachers(tmp_path, morph_folder,
                                                                                     random_weights):
    common = ["train", "--dataset", "morph2", "--root", morph_folder, "--epochs", "1", "--batch-size", "8",
              "--threads", "1", "--no-progress"]
    result = agegender(*common, "--crop-scale", "3.0", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    weights = tmp_path / "run" / "model.pt"
    assert json.loads(weights.with_suffix(".json").read_text())["crop"]["scale"] == 3.0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["crop_scale"] == 3.0
    # evaluate scores the faces cropped as these weights were trained: the preprocessing cache at their scale
    records, _ = load_records("morph2", morph_folder)
    at_3 = Path(os.environ["AGEGENDER_CACHE"]) / "preprocessed" / (
        cache_module.cache_key("morph2", str(morph_folder), records, "scrfd", 3.0) + ".npz")
    at_3.unlink()
    scored = agegender("evaluate", "--root", morph_folder, "--weights", weights, "--json")
    assert scored.returncode == 0, scored.stderr
    assert at_3.is_file()
    changed = agegender(*common, "--out", tmp_path / "run", "--resume")
    assert changed.returncode == 2 and f"crop_scale: 3.0 in the checkpoint, {faces.CROP_SCALE} now" in changed.stderr
    # fine-tuning goes on at the scale the weights learned (unless --crop-scale says otherwise)
    tuned = agegender(*common, "--init-weights", weights, "--out", tmp_path / "tuned")
    assert tuned.returncode == 0, tuned.stderr
    assert json.loads((tmp_path / "tuned" / "model.json").read_text())["crop"]["scale"] == 3.0
    # a weight-file teacher sees the student's crops: it must have learned from crops of the same scale
    teacher = agegender(*common, "--teacher", random_weights, "--crop-scale", "3.0", "--out", tmp_path / "t")
    assert teacher.returncode == 2
    assert f"was trained on crops of scale {faces.CROP_SCALE:g}, this run crops at 3" in teacher.stderr
    wrong = agegender(*common, "--crop-scale", "9", "--out", tmp_path / "w")
    assert wrong.returncode == 2 and "--crop-scale: expected a crop side of 1 to 6 face sizes" in wrong.stderr


# --- resume refuses to mix recipes -------------------------------------------------------------------------------


def test_resume_refuses_a_changed_recipe_or_data_and_a_corrupt_checkpoint(tmp_path, morph_folder):
    common = ["train", "--dataset", "morph2", "--root", morph_folder, "--batch-size", "8", "--threads", "1",
              "--no-progress", "--out", tmp_path / "run"]
    first = agegender(*common, "--epochs", "2")
    assert first.returncode == 0, first.stderr
    config_before = (tmp_path / "run" / "config.json").read_text()
    longer = agegender(*common, "--epochs", "3", "--resume")
    assert longer.returncode == 2
    assert "epochs: 2 in the checkpoint, 3 now" in longer.stderr and "Traceback" not in longer.stderr
    assert (tmp_path / "run" / "config.json").read_text() == config_before  # the refused run wrote nothing
    lr = agegender(*common, "--epochs", "2", "--lr", "0.01", "--resume")
    assert lr.returncode == 2 and "lr: 0.003 in the checkpoint, 0.01 now" in lr.stderr
    # Other faces (a different fold of the same folder) are a different recipe too.
    other_fold = agegender(*common, "--epochs", "2", "--fold", "1", "--protocol", "kfold5", "--resume")
    assert other_fold.returncode == 2 and "training faces:" in other_fold.stderr
    # A finished run resumed with its own recipe just finishes again (nothing retrained, same weights).
    weights_before = (tmp_path / "run" / "model.pt").read_bytes()
    again = agegender(*common, "--epochs", "2", "--resume")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["history"][-1]["epoch"] == 2
    after = torch.load(tmp_path / "run" / "model.pt")
    before = torch.load(io.BytesIO(weights_before))
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    corrupt = agegender(*common, "--epochs", "2", "--resume")
    assert corrupt.returncode == 2 and "checkpoint.pt: not a readable checkpoint" in corrupt.stderr
    assert "delete it" in corrupt.stderr and "Traceback" not in corrupt.stderr



def test_resume_follows_moved_faces_and_weights_but_refuses_retrained_starting_weights(tmp_path, morph_folder):
    data = tmp_path / "morph"
    shutil.copytree(morph_folder, data)
    common = ["train", "--dataset", "morph2", "--batch-size", "8", "--threads", "1", "--no-progress", "--epochs", "1"]
    start = agegender(*common, "--root", data, "--out", tmp_path / "start")
    assert start.returncode == 0, start.stderr
    stage = agegender(*common, "--root", data, "--init-weights", tmp_path / "start" / "model.pt", "--lr", "1e-3",
                      "--out", tmp_path / "stage")
    assert stage.returncode == 0, stage.stderr
    # The checkout and the data moved: the same faces and the same starting weights, under other paths.
    shutil.copytree(data, tmp_path / "elsewhere" / "morph")
    shutil.copytree(tmp_path / "start", tmp_path / "elsewhere" / "start")
    moved = agegender(*common, "--root", tmp_path / "elsewhere" / "morph", "--init-weights",
                      tmp_path / "elsewhere" / "start" / "model.pt", "--lr", "1e-3", "--out", tmp_path / "stage",
                      "--resume")
    assert moved.returncode == 0, moved.stderr
    # The first stage retrained with another recipe: its weights changed under the same path.
    retrained = agegender(*common, "--root", data, "--lr", "0.01", "--out", tmp_path / "start")
    assert retrained.returncode == 0, retrained.stderr
    stale = agegender(*common, "--root", data, "--init-weights", tmp_path / "start" / "model.pt", "--lr", "1e-3",
                      "--out", tmp_path / "stage", "--resume")
    assert stale.returncode == 2 and "Traceback" not in stale.stderr
    assert f"starting weights (--init-weights {tmp_path / 'start' / 'model.pt'})" in stale.stderr
    assert "retrained or replaced since" in stale.stderr


def test_face_fingerprint_names_faces_within_their_dataset():
    def faces(paths, sources):
        n = len(paths)
        return cache_module.PreprocessedSet(np.zeros((n, 2, 2, 3), np.uint8), np.arange(n, dtype=np.float32),
                                            np.ones(n, np.int8), np.array(paths), np.array(paths), np.full(n, ""),
                                            np.ones(n, bool), np.zeros((n, 4), np.float32), [],
                                            sources=np.array(sources))
    here = faces(["/a/b/../data/aaf/1.jpg", "/a/data/aaf/sub/2.jpg", "/a/data/utk/UTKFace/3.jpg"],
                 ["aaf", "aaf", "utkface"])
    moved = faces(["/mnt/aaf/1.jpg", "/mnt/aaf/sub/2.jpg", "/elsewhere/UTKFace/3.jpg"], ["aaf", "aaf", "utkface"])
    assert relative_face_names(here) == ["aaf:1.jpg", "aaf:sub/2.jpg", "utkface:3.jpg"]
    assert data_fingerprint(here) == data_fingerprint(moved)
    assert data_fingerprint(here)["names"] == "relative" and data_fingerprint(here)["faces"] == 3
    # Checkpoints written before names were relative hold the full paths' fingerprint, which a move changes.
    assert data_fingerprint(here, relative=False) != data_fingerprint(moved, relative=False)
    assert "names" not in data_fingerprint(here, relative=False)
    relabelled = faces(["/mnt/aaf/1.jpg", "/mnt/aaf/sub/2.jpg", "/elsewhere/UTKFace/3.jpg"], ["aaf", "aaf", "aaf"])
    assert data_fingerprint(relabelled) != data_fingerprint(moved)


def test_eval_every_changes_only_when_held_out_faces_are_scored(tmp_path, morph_folder):
    common = ["train", "--dataset", "morph2", "--root", morph_folder, "--epochs", "3", "--batch-size", "8",
              "--threads", "1", "--no-progress"]
    every = agegender(*common, "--out", tmp_path / "every")
    second = agegender(*common, "--eval-every", "2", "--out", tmp_path / "second")
    once = agegender(*common, "--eval-every", "0", "--out", tmp_path / "once")
    assert every.returncode == second.returncode == once.returncode == 0, every.stderr + second.stderr + once.stderr
    runs = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("every", "second", "once")}
    assert ["mae" in entry for entry in runs["every"]["history"]] == [True, True, True]
    assert ["mae" in entry for entry in runs["second"]["history"]] == [False, True, False]
    assert ["mae" in entry for entry in runs["once"]["history"]] == [False, False, False]
    reference = torch.load(tmp_path / "every" / "model.pt")
    for name in ("second", "once"):
        weights = torch.load(tmp_path / name / "model.pt")
        assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in reference)
        assert runs[name]["metrics"] == runs["every"]["metrics"]  # the final score is always taken
        assert [e["train_loss"] for e in runs[name]["history"]] == [e["train_loss"] for e in runs["every"]["history"]]
    # How often a run scores is not part of its recipe: a run may resume with another --eval-every.
    resumed = agegender(*common, "--eval-every", "1", "--resume", "--out", tmp_path / "once")
    assert resumed.returncode == 0, resumed.stderr
    negative = agegender(*common, "--eval-every", "-1", "--out", tmp_path / "negative")
    assert negative.returncode == 2 and "--eval-every: expected 0" in negative.stderr



def test_ensemble_weights_are_trained_into_the_weights_recorded_and_inherited(tmp_path, morph_folder):
    from agegender_ros.weights import load_model

    common = ["train", "--dataset", "morph2", "--root", morph_folder, "--epochs", "1", "--batch-size", "8",
              "--threads", "1", "--no-progress"]
    first = agegender(*common, "--ensemble-age-weights", "virtual=0,low=0.25", "--ensemble-gender-weights",
                      "virtual=0", "--out", tmp_path / "first")
    assert first.returncode == 0, first.stderr
    expected = {"age": {"final": 1.0, "virtual": 0.0, "low": 0.25}, "gender": {"final": 1.0, "virtual": 0.0, "low": 1.0}}
    model, card = load_model(tmp_path / "first" / "model.pt")
    assert model.ensemble_weights() == card["ensemble_weights"] == expected
    assert card["recipe"]["ensemble_age_weights"] == {"virtual": 0.0, "low": 0.25}
    # The card's scores are the weighted ensemble's: evaluate (which runs predict) gives the same MAE.
    scored = agegender("evaluate", "--dataset", "morph2", "--root", morph_folder, "--weights",
                       tmp_path / "first" / "model.pt", "--protocol", "kfold5", "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["mae"] == pytest.approx(card["metrics"]["mae"], abs=1e-4)
    # Fine-tuning keeps the starting weights' ensemble unless told otherwise.
    tuned = agegender(*common, "--init-weights", tmp_path / "first" / "model.pt", "--ensemble-gender-weights",
                      "low=0.5", "--out", tmp_path / "tuned")
    assert tuned.returncode == 0, tuned.stderr
    assert load_model(tmp_path / "tuned" / "model.pt")[0].ensemble_weights() == {
        "age": expected["age"], "gender": {"final": 1.0, "virtual": 0.0, "low": 0.5}}
    for flag, value, message in (("--ensemble-age-weights", "middle=1", "no head 'middle'"),
                                 ("--ensemble-gender-weights", "low=x", "expected head=weight"),
                                 ("--ensemble-age-weights", "final=0,virtual=0,low=0", "at least one head")):
        refused = agegender(*common, flag, value, "--out", tmp_path / "refused")
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr
        assert not (tmp_path / "refused").exists()


# --- splits: which faces a run held out, kept in its card -------------------------------------------------------


def test_split_seed_is_recorded_and_evaluate_and_init_weights_honour_it(tmp_path, morph_folder):
    from training.cli import load_dataset
    from training.protocols import held_out_fingerprint

    data = load_dataset("morph2", str(morph_folder), "scrfd", progress=False)
    held_out = {seed: held_out_fingerprint(data.paths[folds("kfold5", data, seed=seed)[1][2]]) for seed in (0, 2)}
    assert held_out[0] != held_out[2]
    common = ["train", "--dataset", "morph2", "--root", morph_folder, "--protocol", "kfold5", "--fold", "1",
              "--epochs", "1", "--batch-size", "16", "--threads", "1", "--no-progress"]
    first = agegender(*common, "--split-seed", "2", "--out", tmp_path / "split2")
    assert first.returncode == 0, first.stderr
    card = json.loads((tmp_path / "split2" / "model.json").read_text())
    assert [(s["protocol"], s["fold"], s["split_seed"], s["held_out_sha256"]) for s in card["splits"]] == [
        ("kfold5", 1, 2, held_out[2])]
    # evaluate --protocol scores the fold and split the card records: the run's own held-out score, no warning.
    weights = tmp_path / "split2" / "model.pt"
    scored = agegender("evaluate", "--root", morph_folder, "--protocol", "kfold5", "--weights", weights, "--json")
    assert scored.returncode == 0, scored.stderr
    metrics = json.loads(scored.stdout)
    run = json.loads((tmp_path / "split2" / "metrics.json").read_text())["metrics"]
    assert metrics["n"] == run["n"] and metrics["mae"] == pytest.approx(run["mae"], abs=1e-4)
    assert metrics["seen_in_training"] == [] and "split seed 2" in metrics["faces"] and "warning" not in scored.stderr
    other = agegender("evaluate", "--root", morph_folder, "--protocol", "kfold5", "--split-seed", "0",
                      "--weights", weights, "--json")
    assert other.returncode == 0 and json.loads(other.stdout)["seen_in_training"]
    assert "warning: the weights trained on morph2 kfold5 fold1 (split seed 2)" in other.stderr
    everything = agegender("evaluate", "--root", morph_folder, "--weights", weights, "--json")
    assert "may hold its training side" in everything.stderr
    # Fine-tuning from those weights on a split that holds out faces they trained on is refused ...
    refused = agegender(*common, "--init-weights", weights, "--out", tmp_path / "refused")
    assert refused.returncode == 2 and "some faces this run holds out were trained on" in refused.stderr
    assert "--split-seed" in refused.stderr and not (tmp_path / "refused" / "model.pt").exists()
    # ... unless asked for; then both splits are in the card. --seed alone leaves the split at split seed 0.
    allowed = agegender(*common, "--seed", "5", "--init-weights", weights, "--allow-split-mismatch",
                        "--out", tmp_path / "allowed")
    assert allowed.returncode == 0, allowed.stderr
    assert "--allow-split-mismatch" in allowed.stderr
    splits = json.loads((tmp_path / "allowed" / "model.json").read_text())["splits"]
    assert [(s["split_seed"], s["held_out_sha256"]) for s in splits] == [(0, held_out[0]), (2, held_out[2])]
    # A weight-file teacher leaks its training faces through its answers: the same check, the same override.
    taught = agegender(*common, "--teacher", weights, "--out", tmp_path / "taught")
    assert taught.returncode == 2 and f"--teacher {weights}: the weights trained on morph2 kfold5" in taught.stderr
    assert not (tmp_path / "taught" / "model.pt").exists()
    own_split = agegender(*common, "--split-seed", "2", "--teacher", weights, "--out", tmp_path / "taught")
    assert own_split.returncode == 0, own_split.stderr
    card = json.loads((tmp_path / "taught" / "model.json").read_text())
    assert [s["split_seed"] for s in card["splits"]] == [2] and card["teachers"][0]["name"] == str(weights)


def test_cards_written_before_splits_were_recorded_give_their_seed_as_the_split_seed():
    from training.protocols import split_conflicts, trained_splits

    card = {"training_data": "aaf:official:official (6637 train / 6685 held out) + utkface:random80:random80 "
                             "(15082 train / 3770 held out)", "recipe": {"seed": 1}}
    splits = trained_splits(card)
    assert [(s["dataset"], s["protocol"], s["fold_name"], s["split_seed"]) for s in splits] == [
        ("aaf", "official", "official", 1), ("utkface", "random80", "random80", 1)]
    asked = {"dataset": "utkface", "protocol": "random80", "fold_name": "random80", "split_seed": 0,
             "held_out_sha256": "0123456789abcdef"}
    assert len(split_conflicts(splits, asked)) == 1
    assert split_conflicts(splits, {**asked, "split_seed": 1}) == []
    assert split_conflicts(splits, {**asked, "dataset": "aaf", "protocol": "official", "fold_name": "official"}) == []
    assert trained_splits({"training_data": "morph2:lopo:subject-001"})[0]["fold_name"] == "subject-001"


# --- labels that are missing: CelebA's ages, unlabelled faces --------------------------------------------------


def test_loss_skips_missing_ages_and_lets_the_teacher_label_them():
    outputs = {"final_age": torch.tensor([30.0, 50.0, 20.0]), "final_gender": torch.tensor([0.0, 0.0, 0.0])}
    ages, genders = torch.tensor([30.0, float("nan"), float("nan")]), torch.tensor([1, 0, -1])
    config = TrainConfig(loss_weights={"final": 1.0}, age_loss_scale=0.1, distill_weight=0.5)
    total, parts = multitask_loss(outputs, ages, genders, config)
    assert torch.isfinite(total)
    assert parts["final_age"] == pytest.approx(0.0)  # only the first face has an age, predicted exactly
    # Teacher ages for all three; the face with a label mixes, the two without learn from the teacher alone.
    teacher = (torch.tensor([40.0, 45.0, float("nan")]), torch.tensor([1.0, 0.0, 1.0]))
    _, parts = multitask_loss(outputs, ages, genders, config, teacher)
    # face 1: 0.5 x 0 + 0.5 x 1.0; face 2: 1 x 0.5; face 3: no age from anyone -> mean over 2 faces
    assert parts["final_age"] == pytest.approx((0.5 + 0.5) / 2)
    gendered = TrainConfig(loss_weights={"final": 1.0}, distill_weight=0.5, distill_gender_weight=0.0)
    _, parts = multitask_loss(outputs, ages, genders, gendered, teacher)
    # labels only where they exist (faces 1, 2), the teacher's P(male) for face 3: logit 0 -> log 2 each
    assert parts["final_gender"] == pytest.approx(float(np.log(2)))


def test_celeba_gender_folders_are_read_with_gender_and_no_age(tmp_path):
    from training.datasets import GENDER_MALE, GENDER_FEMALE, GENDER_UNKNOWN

    face = cv2.imencode(".jpg", np.full((113, 89, 3), 128, np.uint8))[1].tobytes()
    for folder, names in {"Train/male": ["000001.jpg"], "Train/female": ["000002.jpg", "000003.jpg"],
                          "Train": ["000004.jpg"], "Validation/male": ["000005.jpg"], "Test/female": ["000006.jpg"],
                          "Train/notes": ["000007.jpg"]}.items():
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (tmp_path / folder / name).write_bytes(face)
    (tmp_path / "Train" / "readme.txt").write_text("not an image")
    records, problems = load_records("celeba_gender", tmp_path)
    by_name = {Path(r.path).name: r for r in records}
    assert set(by_name) == {f"00000{i}.jpg" for i in range(1, 7)} and problems == []
    assert by_name["000001.jpg"].gender == GENDER_MALE and by_name["000002.jpg"].gender == GENDER_FEMALE
    assert by_name["000004.jpg"].gender == GENDER_UNKNOWN  # loose in Train/: no label
    assert all(np.isnan(r.age) for r in records)
    assert [by_name[n].split for n in ("000001.jpg", "000005.jpg", "000006.jpg")] == ["train", "val", "test"]
    train, held_out = folds("official", cache_module.PreprocessedSet(
        np.zeros((len(records), 1, 1, 3), np.uint8), np.array([r.age for r in records], np.float32),
        np.array([r.gender for r in records], np.int8), np.array([r.subject for r in records]),
        np.array([r.path for r in records]), np.array([r.split for r in records]), np.ones(len(records), bool),
        np.zeros((len(records), 4), np.float32), []))[0][1:]
    assert len(train) == 4 and len(held_out) == 2
    with pytest.raises(Exception, match="CelebA gender layout"):
        load_records("celeba_gender", tmp_path / "Train" / "male")


def test_metrics_leave_unknown_ages_out():
    from training.metrics import age_gender_metrics

    metrics = age_gender_metrics([20.0, float("nan")], [22.0, 50.0], [1, 0], [0.9, 0.2])
    assert metrics["mae"] == pytest.approx(2.0) and metrics["age_n"] == 1 and metrics["n"] == 2
    assert metrics["gender_acc"] == 1.0 and list(metrics["mae_by_decade"]) == ["20-29"]
    ageless = age_gender_metrics([float("nan")] * 2, [30.0, 40.0], [1, 0], [0.9, 0.2])  # CelebA: genders only
    assert ageless["mae"] is None and ageless["ca3"] is None and json.dumps(ageless, allow_nan=False)
