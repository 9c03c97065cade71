"""The shipped default weights are accurate, not merely loadable: scored on a fixed tenth of AAF's validation split
(faces they never trained on) through the training pipeline (.pt, PyTorch) and through the path the node runs
(detector -> align_crop -> ONNX Runtime on the shipped .onnx file). The floors sit a little under the model
card's own figures on the whole split, so a wrong file, flipped genders or swapped colour channels fail."""
import json

import numpy as np
import pytest

from conftest import require_torch, shared

STEP = 10  # every 10th face of AAF val: 669 faces, a standard error of ~0.25 years on the MAE
MAE_SLACK, GENDER_SLACK = 0.6, 0.03


@pytest.fixture(scope="module")
def aaf_val_subset():
    from training.datasets import load_records

    records, _ = load_records("aaf", shared("aaf"))
    return [r for r in records if r.split == "val"][::STEP]


@pytest.fixture(scope="module")
def card_floor():
    from agegender_ros.weights import default_weights_path, read_card

    card = read_card(default_weights_path())
    aaf = card["metrics_per_dataset"]["aaf:official:official"]
    return aaf["mae"] + MAE_SLACK, aaf["gender_acc"] - GENDER_SLACK


def score(records, ages, p_male):
    true_age = np.array([r.age for r in records])
    male = np.array([r.gender for r in records]) == 1
    return float(np.mean(np.abs(np.asarray(ages) - true_age))), float(np.mean((np.asarray(p_male) >= 0.5) == male))


def test_shipped_card_records_the_aaf_faces_it_held_out():
    # `evaluate --protocol official` and `train --init-weights` read this record: it must name AAF val exactly.
    from agegender_ros.weights import default_weights_path, read_card
    from training.datasets import load_records
    from training.protocols import held_out_fingerprint

    records, _ = load_records("aaf", shared("aaf"))
    val = [r.path for r in records if r.split == "val"]
    splits = {split["dataset"]: split for split in read_card(default_weights_path())["splits"]}
    assert set(splits) <= {"aaf", "utkface", "fairface"} and splits["utkface"]["split_seed"] == 0
    if "fairface" in splits:  # its train/ less the stratified tenth it holds out (FairFace's val/ is never read)
        assert splits["fairface"]["protocol"] == "dev10" and splits["fairface"]["split_seed"] == 0
        assert splits["fairface"]["held_out_faces"] == 4_000
    assert splits["aaf"]["protocol"] == "official" and splits["aaf"]["held_out_faces"] == len(val)
    assert splits["aaf"]["held_out_sha256"] == held_out_fingerprint(val)


def test_shipped_pt_weights_hold_their_card_figures_on_aaf_val(aaf_val_subset, card_floor):
    torch = require_torch()
    from agegender_ros.weights import crop_scale, load_model
    from training.cache import load_or_build
    from training.train import predict_crops

    model, card = load_model()
    data = load_or_build("aaf", str(shared("aaf")), aaf_val_subset, progress=False, crop_scale=crop_scale(card))
    assert len(data) == len(aaf_val_subset) == 669
    ages, p_male, _ = predict_crops(model, data.crops, torch.device("cpu"))
    mae, gender = score(aaf_val_subset, ages, p_male)
    assert mae <= card_floor[0] and gender >= card_floor[1], (mae, gender, card_floor)
    # The same faces with blue and red swapped score worse: the check can tell a colour-order mix-up.
    swapped_mae, _ = score(aaf_val_subset, *predict_crops(model, data.crops[..., ::-1].copy(),
                                                             torch.device("cpu"))[:2])
    assert swapped_mae > mae + 0.2, (swapped_mae, mae)


def test_shipped_onnx_through_the_node_pipeline_holds_the_card_figures(aaf_val_subset, card_floor):
    from agegender_ros import faces
    from agegender_ros.estimator import Estimator

    estimator = Estimator.create(detector="scrfd", backend="onnxruntime")
    ages, p_male = [], []
    for record in aaf_val_subset:
        image = faces.read_image(record.path)
        found = estimator(image)
        assert found, f"no face in {record.path}"
        # The dataset photo's face: the largest one (AAF crops hold one face, now and then a second in the edge).
        main = max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        ages.append(main.age)
        p_male.append(main.p_male)
    mae, gender = score(aaf_val_subset, ages, p_male)
    assert mae <= card_floor[0] and gender >= card_floor[1], (mae, gender, card_floor)


def test_model_card_names_where_its_figures_come_from():
    from agegender_ros.weights import default_weights_path, read_card

    card = read_card(default_weights_path())
    assert "Research use only" in card["licence"]
    assert set(card["metrics_per_dataset"]) >= {"aaf:official:official", "utkface:random80:random80"}
    assert "fgnet" in card["metrics_unseen"]
    json.dumps(card)  # plain JSON, as shipped


def test_shipped_weights_on_fairface_dev_split_where_a_user_keeps_fairface():
    """FairFace is never bundled (tests and CI never need it): with AGEGENDER_FAIRFACE naming the folder that holds
    fairface_label_train.csv, the shipped weights are scored on a fixed fifth of the dev split they held out, and
    hold the card's figures there (gender, and age-group accuracy)."""
    import os
    from pathlib import Path

    root = os.environ.get("AGEGENDER_FAIRFACE")
    if not root or not (Path(root) / "fairface_label_train.csv").is_file():
        pytest.skip("FairFace is not here: set AGEGENDER_FAIRFACE to the folder holding fairface_label_train.csv")
    torch = require_torch()
    from agegender_ros.weights import crop_scale, default_weights_path, load_model, read_card
    from training.cache import load_or_build
    from training.datasets import load_records, stratified_split
    from training.metrics import interval_metrics
    from training.train import predict_crops

    card = read_card(default_weights_path())
    figures = card["metrics_per_dataset"].get("fairface:dev10:dev10")
    if figures is None:
        pytest.skip("the shipped weights did not train on FairFace")
    records, _ = load_records("fairface", root)
    _, held_out = stratified_split(records, 0.1, seed=0)  # protocol dev10's split, drawn from the records
    model, card = load_model()
    data = load_or_build("fairface", root, [records[i] for i in held_out[::5]], progress=False,
                         crop_scale=crop_scale(card))
    assert len(data) == 800
    ages, p_male, _ = predict_crops(model, data.crops, torch.device("cpu"))
    gender = float(np.mean((p_male >= 0.5) == (data.genders == 1)))
    groups = interval_metrics(data.age_ranges, ages)["age_group_acc"]
    assert gender >= figures["gender_acc"] - GENDER_SLACK and groups >= figures["age_group_acc"] - 0.05, \
        (gender, groups, figures)
