"""The comparison networks (agegender_ros.baselines): registry contract, sizes, gradients, ONNX export."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agegender_ros.baselines import age_parameter_count, reference_parameter_count
from agegender_ros.model import INPUT_SIZE, available_models, count_parameters, create_model

BASELINES = ("ssrnet", "mobilenet_v1", "densenet")
# Quoted size of the age part (the paper's Tables 3/5, from SSR-Net's comparison): tolerance +-5%.
QUOTED = {"ssrnet": 40_900, "mobilenet_v1": 226_300, "densenet": 242_000}
# The same figures counted exactly as Keras counts them (BatchNorm moving mean/variance included).
KERAS_EXACT = {"ssrnet": 40_915, "mobilenet_v1": 226_309, "densenet": 242_009}


def _warmed(name: str) -> torch.nn.Module:
    """A fresh model whose BatchNorm running statistics moved off their defaults, in eval mode."""
    torch.manual_seed(0)
    model = create_model(name)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, INPUT_SIZE, INPUT_SIZE))
    return model.eval()


@pytest.fixture(scope="module", params=BASELINES)
def model_and_name(request):
    return _warmed(request.param), request.param


def test_registered():
    names = available_models()
    for name in BASELINES:
        assert name in names
    assert "paper" in names


@pytest.mark.parametrize("batch", [2, 1])
def test_outputs(model_and_name, batch):
    model, _ = model_and_name
    with torch.no_grad():
        out = model(torch.randn(batch, 3, INPUT_SIZE, INPUT_SIZE))
    assert set(out) == {"final_age", "final_gender"}
    for value in out.values():
        assert value.shape == (batch,)
        assert torch.isfinite(value).all()


def test_parameter_counts(model_and_name):
    model, name = model_and_name
    age_part = age_parameter_count(model)
    assert abs(age_part - QUOTED[name]) <= 0.05 * QUOTED[name], age_part
    assert reference_parameter_count(model) == KERAS_EXACT[name]
    # The gender path is the small addition each docstring states.
    assert 0 < count_parameters(model) - age_part <= 64
    assert abs(count_parameters(model) - QUOTED[name]) <= 0.05 * QUOTED[name]


def test_predict_ranges(model_and_name):
    model, _ = model_and_name
    age, p_male, age_std = model.predict(torch.randn(5, 3, INPUT_SIZE, INPUT_SIZE) * 3)
    assert age.shape == p_male.shape == age_std.shape == (5,)
    assert ((age >= 0) & (age <= 100)).all()
    assert ((p_male >= 0) & (p_male <= 1)).all()
    assert torch.equal(age_std, torch.zeros(5))


@pytest.mark.parametrize("name", BASELINES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(1)
    model = create_model(name).train()
    # SSR-Net's stage distributions are ReLU-gated (as in the official code): a stage whose p is all zero on this
    # batch passes no gradient into its fusion block. Record that, and exempt only those blocks from "non-zero"
    # (connectivity, checked by `grad is not None`, still holds for them).
    dead_stages: set[str] = set()
    hooks = []
    for stage in ("stage1", "stage2", "stage3") if name == "ssrnet" else ():
        def record(module, inputs, output, stage=stage):
            if not output[0].any():
                dead_stages.add(stage)

        hooks.append(model.get_submodule(stage).register_forward_hook(record))
    out = model(torch.randn(4, 3, INPUT_SIZE, INPUT_SIZE))
    for hook in hooks:
        hook.remove()
    sum(value.sum() for value in out.values()).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} is not connected to the outputs"
        assert torch.isfinite(param.grad).all(), param_name
        if param_name.split(".")[0] in dead_stages:
            continue
        assert param.grad.abs().sum() > 0, f"{param_name} received no gradient"
    assert len(dead_stages) < 3


def test_ssrnet_stagewise_regression_matches_official_formula():
    torch.manual_seed(2)
    model = create_model("ssrnet").eval()
    with torch.no_grad():
        stages, _ = model.stagewise(torch.randn(3, 3, INPUT_SIZE, INPUT_SIZE))
        age = model.merge_age(stages)
    # Official merge_age, written out with explicit loops (V = 101, stage_num 3/3/3, lambdas 0.25).
    lam_l, lam_d, V = 0.25, 0.25, 101.0
    expected = torch.zeros(3)
    denom = torch.ones(3)
    for k in (1, 2, 3):
        p, eta, delta = stages[f"p{k}"], stages[f"eta{k}"], stages[f"delta{k}"]
        denom = denom * (3 * (1 + lam_d * delta))
        expected += sum((i + lam_l * eta[:, i]) * p[:, i] for i in range(3)) / denom
    torch.testing.assert_close(age, V * expected)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE))
        stages0, _ = model.stagewise(torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE))
    torch.testing.assert_close(out["final_age"], model.merge_age(stages0))


def test_onnx_matches_torch(model_and_name, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pytest.importorskip("onnx", reason="the ONNX exporter needs the onnx package")
    from agegender_ros.torch_backend import export_onnx

    model, name = model_and_name
    batch = np.random.default_rng(3).standard_normal((3, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    age_t, p_male_t, _ = model.predict(torch.from_numpy(batch))
    try:
        path = export_onnx(model, tmp_path / f"{name}.onnx")
    finally:
        # export_onnx wraps the model in a fresh (train-mode) PredictWrapper; the exporter restores the wrapper's
        # mode afterwards, which leaves the model in train mode. Keep the shared fixture in eval mode.
        model.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    age, p_male, _ = session.run(None, {"faces": batch})
    np.testing.assert_allclose(age, age_t.numpy(), atol=0.01, rtol=0)
    np.testing.assert_allclose(p_male, p_male_t.numpy(), atol=1e-4, rtol=0)
