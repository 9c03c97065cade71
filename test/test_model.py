"""The paper network: output contract, parameter/FLOP budget, ensemble arithmetic, registry."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from agegender_ros.model import (HEADS, PaperNet, available_models, count_flops_per_face, count_parameters,
                                 create_model, ensemble, normalise_crops, normalise_crops_tensor)
from agegender_ros.weights import default_weights_path, read_card


def test_forward_returns_six_outputs_of_batch_shape():
    model = PaperNet().eval()
    outputs = model(torch.randn(5, 3, 64, 64))
    assert sorted(outputs) == sorted(f"{h}_{t}" for h in HEADS for t in ("age", "gender"))
    assert all(v.shape == (5,) and torch.isfinite(v).all() for v in outputs.values())


def test_parameter_budget_and_flops():
    model = PaperNet()
    assert abs(count_parameters(model) - 99_200) <= 0.02 * 99_200
    assert count_flops_per_face(model) <= 60e6


def test_every_parameter_gets_a_gradient():
    model = PaperNet().train()
    sum(v.sum() for v in model(torch.randn(4, 3, 64, 64)).values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_ensemble_is_the_weighted_mean_of_heads_and_the_spread_their_std():
    outputs = {"final_age": torch.tensor([30.0]), "virtual_age": torch.tensor([20.0]), "low_age": torch.tensor([40.0]),
               "final_gender": torch.tensor([0.0]), "virtual_gender": torch.tensor([np.log(3.0)]),
               "low_gender": torch.tensor([-np.log(3.0)])}
    equal = torch.ones(3)
    age, p_male, spread = ensemble(outputs, HEADS, equal, equal)
    assert age.item() == pytest.approx(30.0)
    assert p_male.item() == pytest.approx((0.5 + 0.75 + 0.25) / 3)
    assert spread.item() == pytest.approx(np.std([30, 20, 40]))
    age, p_male, _ = ensemble(outputs, HEADS, torch.tensor([2.0, 1.0, 1.0]), torch.tensor([0.0, 1.0, 0.0]))
    assert age.item() == pytest.approx((60 + 20 + 40) / 4)
    assert p_male.item() == pytest.approx(0.75)


def test_set_ensemble_weights_changes_predict_and_travels_in_the_weights_file(tmp_path):
    from agegender_ros.weights import load_model, save_weights

    torch.manual_seed(0)
    model = PaperNet(age_bins=12).eval()
    x = torch.randn(4, 3, 64, 64)
    model.set_ensemble_weights(age={"virtual": 0, "low": 0.25}, gender={"virtual": 0.0})
    assert model.ensemble_weights() == {"age": {"final": 1.0, "virtual": 0.0, "low": 0.25},
                                        "gender": {"final": 1.0, "virtual": 0.0, "low": 1.0}}
    outputs = model(x)
    age, p_male, _ = model.predict(x)
    torch.testing.assert_close(age, ((outputs["final_age"] + 0.25 * outputs["low_age"]) / 1.25).clamp(0, 100))
    torch.testing.assert_close(p_male, (torch.sigmoid(outputs["final_gender"]) + torch.sigmoid(outputs["low_gender"])) / 2)
    path = tmp_path / "weighted.pt"
    save_weights(model, path, {"architecture": "paper", "model_args": {"age_bins": 12}, "training_data": "none"})
    loaded, _ = load_model(path)
    assert loaded.ensemble_weights() == model.ensemble_weights()
    torch.testing.assert_close(loaded.predict(x)[0], age)
    for bad, message in (({"middle": 1.0}, "no head 'middle'"), ({"low": -1.0}, "expected a weight >= 0"),
                         ({"final": 0, "virtual": 0, "low": 0}, "at least one head")):
        with pytest.raises(ValueError, match=message):
            model.set_ensemble_weights(age=bad)
    assert model.ensemble_weights()["age"] == {"final": 1.0, "virtual": 0.0, "low": 0.25}  # a refusal changes nothing


def test_predict_clamps_age_and_returns_probabilities():
    model = PaperNet().eval()
    age, p_male, spread = model.predict(torch.randn(8, 3, 64, 64) * 50)
    assert ((age >= 0) & (age <= 100)).all() and ((p_male >= 0) & (p_male <= 1)).all() and (spread >= 0).all()


def test_numpy_and_torch_normalisation_agree():
    crops = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(normalise_crops(crops), normalise_crops_tensor(torch.from_numpy(crops)).numpy(),
                               atol=1e-6)
    # BGR in, RGB planes out: a pure-blue BGR pixel lands in the third (blue) channel.
    blue = np.zeros((1, 64, 64, 3), np.uint8)
    blue[..., 0] = 255
    planes = normalise_crops(blue)[0]
    assert planes[2].mean() > planes[0].mean()


def test_registry_lists_paper_and_rejects_unknown_names():
    assert "paper" in available_models()
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")


def test_info_on_an_unknown_model_lists_the_registry_without_a_traceback():
    result = subprocess.run([sys.executable, "-m", "agegender_ros.cli", "info", "--model", "nope"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "unknown model 'nope'" in result.stderr and "paper" in result.stderr


def test_info_json_is_measured_from_the_model():
    out = subprocess.run([sys.executable, "-m", "agegender_ros.cli", "info", "--json"], capture_output=True,
                         text=True, check=True).stdout
    info = json.loads(out)
    model = PaperNet(**read_card(default_weights_path())["model_args"])  # the net the shipped weights load into
    assert info["model_args"] == read_card(default_weights_path())["model_args"]
    assert info["params"] == count_parameters(model) and abs(info["params"] / 99_200 - 1) <= 0.02  # paper: 99.2k
    assert info["flops_per_face"] == count_flops_per_face(model)
    assert info["input_size"] == 64
