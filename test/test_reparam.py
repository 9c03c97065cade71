"""Structural re-parameterisation (training/reparam.py): trained as branches, shipped as the plain paper net."""
import json
import subprocess
import sys

import pytest
import torch

from agegender_ros.model import ConvBNAct, count_flops_per_face, count_parameters, create_model
from training.reparam import RepConvBNAct, expand, fuse


def _randomise_batch_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every BN statistics and affine values far from their defaults, as training would."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)


@pytest.mark.parametrize("model_args", [{"age_bins": 12}, {}, {"age_bins": 12, "width": 1.5}])
def test_fused_network_is_the_plain_paper_net_and_computes_what_the_branches_did(model_args):
    generator = torch.Generator().manual_seed(0)
    plain = create_model("paper", **model_args)
    expanded = expand(create_model("paper", **model_args), new_branches_start_at_zero=False)
    blocks = [m for m in expanded.modules() if isinstance(m, RepConvBNAct)]
    # Every unit became a block: the 5x5 stem, the dilated stem, the strided and the 1x1 convs among them.
    assert len(blocks) == sum(isinstance(m, ConvBNAct) for m in plain.modules()) == 18
    assert {b.kernel for b in blocks} == {1, 3, 5} and {b.stride for b in blocks} == {1, 2}
    assert any(b.dilation == 2 for b in blocks) and any(b.identity is not None for b in blocks)
    assert count_parameters(expanded) > count_parameters(plain)
    _randomise_batch_norms(expanded, generator)
    expanded.eval()
    x = torch.randn(4, 3, 64, 64, generator=generator)
    with torch.no_grad():
        before = expanded(x)
        fused = fuse(expanded)
        after = fused(x)
    assert not any(isinstance(m, RepConvBNAct) for m in fused.modules())
    assert not any(m.training for m in fused.modules())  # folded units keep the model's eval mode
    # The same state-dict keys and shapes as the plain net: any loader of our weights reads it unchanged.
    assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert count_parameters(fused) == count_parameters(plain)
    assert count_flops_per_face(fused) == count_flops_per_face(plain)
    for key in before:
        assert torch.allclose(after[key], before[key], atol=1e-4, rtol=1e-4), key


def test_new_branches_start_at_zero_so_fine_tuning_starts_from_the_same_function():
    generator = torch.Generator().manual_seed(1)
    model = create_model("paper", age_bins=12)
    _randomise_batch_norms(model, generator)
    model.eval()
    x = torch.randn(3, 3, 64, 64, generator=generator)
    with torch.no_grad():
        before = model(x)["final_age"]
        expanded = expand(model).eval()
        assert torch.allclose(expanded(x)["final_age"], before, atol=1e-5)
    with pytest.raises(ValueError, match="no conv -> BN -> activation units"):
        expand(torch.nn.Linear(2, 2))
    from training.train import TrainConfig

    with pytest.raises(ValueError, match="reparam is an option of the paper net"):
        TrainConfig(model="ssrnet", reparam=True).model_args()


def test_reparam_training_ships_the_plain_net_scored_as_it_ships(tmp_path, morph_folder):
    from agegender_ros.weights import load_model
    from training.train import TrainConfig

    out = tmp_path / "rep"
    run = subprocess.run([sys.executable, "-m", "agegender_ros.cli", "train", "--dataset", "morph2", "--root",
                          str(morph_folder), "--epochs", "2", "--batch-size", "16", "--threads", "1", "--age-bins",
                          "12", "--reparam", "--no-progress", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    model, card = load_model(out / "model.pt")
    assert card["model_args"] == {"age_bins": 12} and card["recipe"]["reparam"] is True
    assert count_parameters(model) == count_parameters(create_model("paper", age_bins=12))
    # The checkpoint holds the branches (for --resume); the metrics are the shipped net's own predictions.
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert any(".pointwise." in key for key in checkpoint["model"])
    assert TrainConfig(**checkpoint["config"]).reparam
    metrics = json.loads((out / "metrics.json").read_text())
    from training.cli import load_dataset, pick_fold
    from training.train import evaluate, pick_device

    data = load_dataset("morph2", str(morph_folder), "scrfd", None, False)  # the run's cached crops
    _, _, _, test_index = pick_fold("morph2", data, "kfold5", None, 0)  # the fold `train` held out
    scores, _ = evaluate(model, data.subset(test_index), pick_device("cpu"))
    assert scores["mae"] == pytest.approx(metrics["metrics"]["mae"], abs=1e-4)
