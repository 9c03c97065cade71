"""Age-group labels (FairFace): the adapter, the interval loss and label distributions, the teacher inside the group,
the interval metrics and the per-race / per-age-group report, the stratified dev split, a CLI run; and the detectors'
close-up pass that finds faces filling the frame."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import RUNTIME_ONLY, shared

from agegender_ros import faces

if RUNTIME_ONLY:
    pytest.skip("training tests need torch", allow_module_level=True)

from training import cache as cache_module  # noqa: E402
from training.datasets import (FAIRFACE_LABEL_FILE, GENDER_FEMALE, GENDER_MALE, detect_dataset,  # noqa: E402
                               load_records, parse_age_group, stratified_split)
from training.metrics import group_report, interval_metrics  # noqa: E402
from training.distill import clip_into_age_groups, restrict_to_age_groups  # noqa: E402
from training.losses import interval_label_distribution, label_distribution, multitask_loss  # noqa: E402
from training.protocols import folds  # noqa: E402
from training.train import TrainConfig  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "agegender_ros" / "samples"
INF = math.inf

# Every age spelling of the published CSV (a spreadsheet mangled 3-9 and 10-19) and the group each means.
SPELLINGS = {"0-2": (0, 3), "03-Sep": (3, 10), "Oct-19": (10, 20), "20-29": (20, 30), "30-39": (30, 40),
             "40-49": (40, 50), "50-59": (50, 60), "60-69": (60, 70), "more than 70": (70, INF)}
RACES = ["Black", "East Asian", "Indian", "Latino_Hispanic", "Middle Eastern", "Southeast Asian", "White"]


def write_fairface(root: Path, face_files: list[Path], rows: list[tuple[str, str, str]] | None = None) -> Path:
    """A FairFace-layout folder: fair_face/train/N.jpg and fairface_label_train.csv, one row per face file
    (age spellings, genders and races cycled) plus the extra rows given."""
    (root / "fair_face" / "train").mkdir(parents=True)
    lines = ["file,age,gender,race,service_test"]
    for i, source in enumerate(face_files, start=1):
        shutil.copy(source, root / "fair_face" / "train" / f"{i}.jpg")
        age = list(SPELLINGS)[i % len(SPELLINGS)]
        lines.append(f"train/{i}.jpg,{age},{'Male' if i % 2 else 'Female'},{RACES[i % len(RACES)]},TRUE")
    for file, age, race in rows or []:
        lines.append(f"{file},{age},Male,{race},FALSE")
    (root / FAIRFACE_LABEL_FILE).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def face_files():
    return sorted(shared("utkface/crop_part1").glob("*.jpg"))[::40][:63]


# --- the adapter --------------------------------------------------------------------------------------------------


def test_every_age_spelling_is_read_as_its_group():
    for spelling, (low, high) in SPELLINGS.items():
        assert parse_age_group(spelling) == (low, high)
    assert parse_age_group(" sep-03 ") == (3, 10) and parse_age_group("70+") == (70, INF)
    assert parse_age_group("3-Oct") is None and parse_age_group("") is None


def test_adapter_reads_groups_genders_races_and_names_bad_rows(tmp_path, face_files):
    root = write_fairface(tmp_path / "ff", face_files[:18], rows=[
        ("train/1.jpg", "twenty", "White"),         # unknown age cell
        ("train/2.jpg", "20-29", "Martian"),        # unknown race
        ("train/999.jpg", "20-29", "White"),        # listed, missing
        ("val/1.jpg", "20-29", "White"),            # the reserved val/: never read
    ])
    records, problems = load_records("fairface", root)
    assert len(records) == 18 and detect_dataset(root) == "fairface"
    by_name = {Path(r.path).name: r for r in records}
    first = by_name["1.jpg"]
    assert first.age_range == (3, 10) and first.age == 6.5 and first.gender == GENDER_MALE
    assert first.race == "East Asian" and first.split == "train"
    assert by_name["8.jpg"].age_range == (70, INF) and by_name["8.jpg"].age == 75
    assert by_name["2.jpg"].age_range == (10, 20) and by_name["2.jpg"].gender == GENDER_FEMALE
    assert {r.age_range for r in records} == {tuple(map(float, g)) for g in SPELLINGS.values()}
    reasons = {where.rsplit(", ", 1)[-1] if "line" in where else where: reason for where, reason in problems}
    csv_path = root / FAIRFACE_LABEL_FILE
    assert reasons["line 20"] == "unknown age 'twenty' (file train/1.jpg)"
    assert reasons["line 21"] == "unknown race 'Martian' (file train/2.jpg)"
    assert any(where.startswith(str(csv_path)) for where, _ in problems)
    assert reasons[str(root / "fair_face" / "train" / "999.jpg")].startswith(f"listed in {csv_path}, line 22")
    assert "reserved" in reasons["line 23"]


def test_a_corrupt_photo_is_reported_once_and_skipped(tmp_path, face_files):
    root = write_fairface(tmp_path / "ff", face_files[:6])
    broken = root / "fair_face" / "train" / "3.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    records, problems = load_records("fairface", root)
    assert len(records) == 6 and not problems  # images are opened when preprocessing, not listed
    data = cache_module.load_or_build("fairface", str(root), records, progress=False)
    assert len(data) == 5 and [path for path, _ in data.failed] == [str(broken)]
    assert data.has_intervals and set(data.races) <= set(RACES)
    np.testing.assert_array_equal(data.age_ranges[:, 1] > data.age_ranges[:, 0], True)


def test_a_csv_without_the_columns_is_a_layout_error(tmp_path):
    (tmp_path / FAIRFACE_LABEL_FILE).write_text("name,years\n1.jpg,20\n")
    with pytest.raises(ValueError, match="no column file, age, gender, race"):
        load_records("fairface", tmp_path)


def test_dev_split_holds_a_tenth_of_every_race_and_age_group(tmp_path, face_files):
    records, _ = load_records("fairface", write_fairface(tmp_path / "ff", face_files))
    many = [r for r in records for _ in range(10)]  # 630 records, 10 per (race, group) stratum at least
    many = [type(r)(f"{r.path}#{i}", r.age, r.gender, f"s{i}", r.split, r.age_range, r.race)
            for i, r in enumerate(many)]
    train, test = stratified_split(many, 0.1, seed=0)
    assert sorted(train + test) == list(range(len(many))) and len(test) == 63
    strata = {(r.race, r.age_range) for r in many}
    for stratum in strata:
        members = [i for i, r in enumerate(many) if (r.race, r.age_range) == stratum]
        assert abs(sum(i in set(test) for i in members) - len(members) * 0.1) < 1
    assert stratified_split(many, 0.1, seed=0) == (train, test)
    assert stratified_split(many, 0.1, seed=1)[1] != test


# --- the interval loss and label distributions ---------------------------------------------------------------------


def test_interval_loss_is_zero_inside_and_the_years_outside_elsewhere():
    # [20, 30): inside, below by 5, above by 4; open-ended [70, inf): 90 is inside, 60 is 10 below; a year label.
    predicted = torch.tensor([25.0, 15.0, 34.0, 90.0, 60.0, 41.0])
    ranges = torch.tensor([[20, 30], [20, 30], [20, 30], [70, INF], [70, INF], [38, 38]], dtype=torch.float32)
    ages = torch.tensor([25.0, 25.0, 25.0, 75.0, 75.0, 38.0])
    genders = torch.full((6,), -1)
    config = TrainConfig(loss_weights={"final": 1.0}, age_loss_scale=1.0)
    _, parts = multitask_loss({"final_age": predicted}, ages, genders, config, age_ranges=ranges)
    assert parts["final_age"] == pytest.approx((0 + 5 + 4 + 0 + 10 + 3) / 6)
    # Without ranges, the same faces learn the groups' middles.
    _, parts = multitask_loss({"final_age": predicted}, ages, genders, config)
    assert parts["final_age"] == pytest.approx((0 + 10 + 9 + 15 + 15 + 3) / 6)


def test_year_labels_give_the_same_loss_with_or_without_ranges():
    outputs = {"final_age": torch.tensor([20.0, 51.0], requires_grad=True), "final_gender": torch.tensor([0.3, -1.0])}
    ages, genders = torch.tensor([25.0, 50.0]), torch.tensor([1, 0])
    config = TrainConfig()
    plain, _ = multitask_loss(outputs, ages, genders, config)
    ranged, _ = multitask_loss(outputs, ages, genders, config, age_ranges=torch.stack([ages, ages], 1))
    assert plain.item() == ranged.item()


def test_an_age_groups_label_distribution_covers_its_bins():
    bins = 12
    group = interval_label_distribution(torch.tensor([[20.0, 30.0], [70.0, INF]]), bins)
    assert torch.allclose(group.sum(1), torch.ones(2))
    # The flat group spreads further than a point at its middle, and keeps its mean near the middle.
    point = label_distribution(torch.tensor([25.0]), bins)[0]
    from agegender_ros.model import age_bin_centres

    centres = age_bin_centres(bins)
    assert float((group[0] * centres).sum()) == pytest.approx(25.0, abs=1.5)
    spread = lambda p: float((p * (centres - (p * centres).sum()) ** 2).sum())  # noqa: E731
    assert spread(group[0]) > spread(point)
    assert float((group[1] * centres).sum()) > 70  # 70+: mass above 70


def test_matched_label_distributions_keep_a_babys_age_as_their_mean():
    from agegender_ros.model import age_bin_centres

    bins = 12
    centres = age_bin_centres(bins)  # 0, 9.09, ..., 100
    mean = lambda p: (p * centres).sum(1)  # noqa: E731
    ages = torch.tensor([1.5, 6.5, 45.0, 75.0])
    # The plain Gaussian is cut off below the first bin: its mean is years above a baby's or a child's age.
    plain = mean(label_distribution(ages, bins))
    assert plain[0] > 5.0 and plain[1] > 8.0
    matched = label_distribution(ages, bins, match_mean=True)
    assert torch.allclose(matched.sum(1), torch.ones(4))
    assert torch.allclose(mean(matched), ages, atol=0.01)
    # Far from the ends the cut-off does not matter: the same Gaussian.
    assert torch.allclose(matched[2:], label_distribution(ages[2:], bins), atol=1e-3)
    groups = torch.tensor([[0.0, 3.0], [3.0, 10.0], [20.0, 30.0]])
    assert torch.allclose(mean(interval_label_distribution(groups, bins, match_mean=True)),
                          torch.tensor([1.5, 6.5, 25.0]), atol=0.05)
    # The loss uses them when the run asks for it.
    logits = torch.zeros(1, bins, requires_grad=True)
    outputs = {"final_age": torch.tensor([5.0]), "final_age_logits": logits}
    config = TrainConfig(loss_weights={"final": 1.0}, age_bins=bins, match_age_distribution_mean=True)
    _, parts = multitask_loss(outputs, torch.tensor([1.5]), torch.tensor([-1]), config)
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits, 1), matched[:1], reduction="batchmean")
    assert parts["final_age_distribution"] == pytest.approx(float(expected.detach()), rel=1e-5)


def test_a_face_with_an_age_group_learns_its_group_distribution():
    bins = 12
    logits = torch.zeros(1, bins, requires_grad=True)
    outputs = {"final_age": torch.tensor([40.0]), "final_age_logits": logits}
    ranges = torch.tensor([[20.0, 30.0]])
    config = TrainConfig(loss_weights={"final": 1.0}, age_bins=bins)
    loss, parts = multitask_loss(outputs, torch.tensor([25.0]), torch.tensor([-1]), config, age_ranges=ranges)
    target = interval_label_distribution(ranges, bins)
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits, 1), target, reduction="batchmean")
    assert parts["final_age_distribution"] == pytest.approx(float(expected.detach()))


def test_the_teacher_age_is_clipped_into_the_group_and_its_distribution_restricted_to_it():
    data = cache_module.PreprocessedSet(
        np.zeros((4, 1, 1, 3), np.uint8), np.array([25, 25, 75, 40], np.float32), np.zeros(4, np.int8),
        np.array(list("abcd")), np.array(list("abcd")), np.full(4, ""), np.ones(4, bool), np.zeros((4, 4), np.float32),
        [], age_ranges=np.array([[20, 30], [20, 30], [70, INF], [40, 40]], np.float32))
    teacher = np.array([17.0, 26.0, 61.0, 33.0], np.float32)
    # Below the group: its low end; inside: unchanged; 70+: at least 70; a year's label: the teacher's own age.
    np.testing.assert_allclose(clip_into_age_groups(teacher, data), [20.0, 26.0, 70.0, 33.0])
    bins = 12
    young = label_distribution(torch.tensor([10.0, 25.0, 60.0, 33.0]), bins).numpy()
    restricted = restrict_to_age_groups(young, data, bins)
    np.testing.assert_allclose(restricted.sum(1), 1, atol=1e-5)
    from agegender_ros.model import age_bin_centres

    centres = age_bin_centres(bins).numpy()
    # A teacher at 10 is pulled into 20-29: only bins whose span reaches into the group keep mass.
    step = centres[1] - centres[0]
    reaching = (centres + step / 2 > 20) & (centres - step / 2 < 30)
    assert restricted[0][~reaching].sum() == 0 and 18 <= (restricted[0] * centres).sum() <= 30
    assert restricted[2][centres + step / 2 <= 70].sum() == 0  # 70+
    np.testing.assert_array_equal(restricted[3], young[3])  # a year's label: untouched


# --- metrics and report --------------------------------------------------------------------------------------------


FAIRFACE_GROUPS = np.array([[0, 3], [3, 10], [10, 20], [20, 30], [30, 40], [40, 50], [50, 60], [60, 70], [70, INF]],
                           np.float32)


def test_interval_metrics_by_hand():
    ranges = FAIRFACE_GROUPS[[3, 3, 3, 8, 8, 1]]
    predicted = np.array([25.0, 17.0, 41.0, 95.0, 65.0, 9.9])
    # In the group: 25 (20-29), 95 (70+), 9.9 (3-9); 17 is one group below 20-29, 41 two above, 65 one below 70+.
    metrics = interval_metrics(ranges, predicted, groups=FAIRFACE_GROUPS)
    assert metrics["age_group_n"] == 6
    assert metrics["age_group_acc"] == pytest.approx(3 / 6)
    assert metrics["age_group_one_off"] == pytest.approx(5 / 6)
    assert metrics["years_outside"] == pytest.approx((0 + 3 + 11 + 0 + 5 + 0) / 6)
    assert interval_metrics(np.array([[30, 30]], np.float32), [31.0])["age_group_acc"] is None  # years only


def test_report_by_race_and_age_group_counts_misses_wrong():
    ranges = FAIRFACE_GROUPS[[3, 3, 4, 8]]
    races = np.array(["Black", "Black", "White", "White"])
    predicted = np.array([25.0, 26.0, 35.0, 50.0])
    genders = np.array([1, 0, 0, 1])
    p_male = np.array([0.9, 0.2, 0.8, 0.7])
    detected = np.array([True, False, True, True])
    report = group_report(races, ranges, predicted, genders, p_male, detected)
    black, white = report["by_race"]["Black"], report["by_race"]["White"]
    assert black == {"n": 2, "found": 1, "gender_acc": 0.5, "gender_acc_found": 1.0, "age_group_acc": 0.5,
                     "age_group_acc_found": 1.0}
    assert white["gender_acc"] == 0.5 and white["age_group_acc"] == 0.5
    assert list(report["by_age_group"]) == ["20-29", "30-39", "70+"]
    assert report["by_age_group"]["20-29"]["age_group_acc"] == 0.5
    assert report["by_age_group"]["70+"]["age_group_acc"] == 0.0
    assert report["all"]["n"] == 4 and report["all"]["gender_acc"] == 0.5
    assert "by_race" not in group_report(np.full(4, ""), ranges, predicted, genders, p_male, detected)
    # In a mixed set, faces labelled with a year (AAF, UTKFace) are left out of the report.
    mixed = group_report(np.append(races, ""), np.vstack([ranges, [[30, 30]]]), np.append(predicted, 31.0),
                         np.append(genders, 1), np.append(p_male, 0.1), np.append(detected, True))
    assert mixed == report


# --- through the CLI ------------------------------------------------------------------------------------------------


def agegender(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "agegender_ros.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def test_train_one_epoch_and_evaluate_by_race_and_age_group(tmp_path, face_files):
    root = write_fairface(tmp_path / "ff", face_files)
    run = tmp_path / "run"
    result = agegender("train", "--dataset", "fairface", "--root", root, "--epochs", "1", "--batch-size", "16",
                       "--age-bins", "12", "--threads", "1", "--no-progress", "--out", run)
    assert result.returncode == 0, result.stderr
    card = json.loads((run / "model.json").read_text())
    assert card["splits"][0]["protocol"] == "dev10" and card["splits"][0]["held_out_faces"] == 7
    assert "CC BY 4.0" in card["licence"] and "Research use only" not in card["licence"]
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["age_group_acc"] <= metrics["age_group_one_off"] <= 1 and metrics["years_outside"] >= 0
    assert set(metrics["groups"]["by_race"]) <= set(RACES)
    result = agegender("evaluate", "--dataset", "fairface", "--root", root, "--weights", run / "model.pt",
                       "--protocol", "dev10", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["n"] == 7 and out["faces"].startswith("held-out side of fairface dev10")
    assert {"age_group_acc", "age_group_one_off", "years_outside", "by_race", "by_age_group", "all"} <= set(out)
    assert "by_decade" not in out
    # Fine-tuned weights carry their starting weights' licence terms in their card.
    tuned = agegender("train", "--dataset", "fairface", "--root", root, "--epochs", "1", "--batch-size", "16",
                      "--age-bins", "12", "--threads", "1", "--no-progress", "--init-weights", run / "model.pt",
                      "--out", tmp_path / "tuned")
    assert tuned.returncode == 0, tuned.stderr
    licence = json.loads((tmp_path / "tuned" / "model.json").read_text())["licence"]
    assert licence == f"{card['licence']} Initialised from {run / 'model.pt'} (under the same terms)."
    text = agegender("evaluate", "--dataset", "fairface", "--root", root, "--weights", run / "model.pt")
    assert text.returncode == 0, text.stderr
    assert "by race" in text.stdout and "by age group" in text.stdout and "Latino_Hispanic" in text.stdout


def test_midpoint_ablation_learns_the_groups_middles(tmp_path, face_files):
    root = write_fairface(tmp_path / "ff", face_files[:32])
    result = agegender("train", "--dataset", "fairface", "--root", root, "--epochs", "2", "--batch-size", "8",
                       "--age-groups", "midpoint", "--threads", "1", "--no-progress", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["recipe"]["age_groups"] == "midpoint"
    from training.train import TrainConfig as Config, train

    with pytest.raises(ValueError, match="age_groups 'years'"):
        data = cache_module.load_or_build("fairface", str(root), load_records("fairface", root)[0], progress=False)
        train(Config(age_groups="years", epochs=1), data, data.subset([]), tmp_path / "bad", progress=False)


def test_dev10_is_the_fairface_default_and_recorded_with_its_seed(tmp_path, face_files):
    records, _ = load_records("fairface", write_fairface(tmp_path / "ff", face_files))
    data = cache_module.PreprocessedSet(
        np.zeros((len(records), 1, 1, 3), np.uint8), np.array([r.age for r in records], np.float32),
        np.array([r.gender for r in records], np.int8), np.array([r.subject for r in records]),
        np.array([r.path for r in records]), np.array([r.split for r in records]), np.ones(len(records), bool),
        np.zeros((len(records), 4), np.float32), [], age_ranges=np.array([r.age_range for r in records], np.float32),
        races=np.array([r.race for r in records]))
    (name, train, test), = folds("dev10", data)
    assert name == "dev10" and len(test) == 7 and not set(train) & set(test)


# --- faces that fill the frame ---------------------------------------------------------------------------------


def astronaut_close_up() -> np.ndarray:
    """The astronaut's face with a fifth of the face box cut off each side: the face runs past every edge."""
    image = cv2.imread(str(SAMPLES / "astronaut.jpg"))
    x1, y1, x2, y2 = 180, 57, 271, 177  # SCRFD's box of the face in the whole photo
    w, h = x2 - x1, y2 - y1
    return np.ascontiguousarray(image[int(y1 + 0.2 * h):int(y2 - 0.2 * h), int(x1 + 0.2 * w):int(x2 - 0.2 * w)])


@pytest.mark.parametrize("name", ["scrfd", "blazeface"])
def test_a_face_that_runs_past_the_edges_is_found_by_the_close_up_pass(name):
    close_up = astronaut_close_up()
    try:
        with_pass = faces.create_detector(name, threads=1)
        without = faces.create_detector(name, threads=1, **({"closeup_size": 0} if name == "scrfd" else
                                                             {"closeup": False}))
    except faces.DetectorUnavailable as error:
        pytest.skip(str(error))
    assert without.detect(close_up) == []  # the frame's own pass misses it
    found = with_pass.detect(close_up)
    assert len(found) == 1
    h, w = close_up.shape[:2]
    x1, y1, x2, y2 = found[0].box
    # In the frame's pixels, the box is larger than the frame and around its centre.
    assert x1 < 0.1 * w and x2 > 0.9 * w and y1 < 0.1 * h and y2 > 0.9 * h
    assert abs((x1 + x2) / 2 - w / 2) < 0.2 * w and abs((y1 + y2) / 2 - h / 2) < 0.25 * h



def test_scrfd_runs_the_close_up_pass_only_after_a_near_miss():
    try:
        detector = faces.create_detector("scrfd", threads=1)
    except faces.DetectorUnavailable as error:
        pytest.skip(str(error))
    passes = []
    first_pass = detector._detect
    detector._detect = lambda frame, size, pad: passes.append(size) or first_pass(frame, size, pad)
    empty = np.full((480, 640, 3), (90, 110, 130), np.uint8)
    assert detector.detect(empty) == [] and passes == [detector.input_size]  # nobody there: one pass
    passes.clear()
    assert len(detector.detect(astronaut_close_up())) == 1
    assert passes == [detector.input_size, faces.CLOSEUP_SIZE]


def test_a_chain_of_fine_tunings_states_each_term_once():
    from training.cli import inherited_licence, licence_of_datasets

    teacher = " Distilled from teacher hse (MIT), which learned from IMDB faces."
    stage3 = licence_of_datasets(["aaf", "utkface"]) + teacher
    own = licence_of_datasets(["aaf", "utkface", "fairface"])
    stage4 = inherited_licence(own, "stage3.pt", stage3)
    assert stage4 == f"{own} Initialised from stage3.pt, whose card adds:{teacher}"
    stage5 = inherited_licence(own, "stage4.pt", stage4)
    assert stage5 == f"{own} Initialised from stage4.pt, whose card adds:{teacher}"
    assert stage5.count("CC BY 4.0") == 1 and stage5.count("Research use only") == 1
    assert inherited_licence(own, "x.pt", own).endswith("Initialised from x.pt (under the same terms).")

def test_the_card_licence_names_fairface_and_keeps_the_research_only_datasets():
    from training.cli import licence_of_datasets

    licence = licence_of_datasets(["aaf", "utkface", "fairface"])
    assert licence.startswith("Research use only") and "(aaf, utkface)" in licence
    assert "FairFace" in licence and "CC BY 4.0" in licence
