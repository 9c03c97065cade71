"""training/soup.py and `agegender soup`: the mean of fine-tunings of one start, refused for anything else, scored as
train scores its model."""
import json

import pytest
import torch

from test_training import agegender
from training.soup import SoupError, average_cards, average_state_dicts


def test_floats_are_averaged_counters_kept_and_other_shapes_refused():
    first = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(7)}
    second = {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(9)}
    mean = average_state_dicts([first, second])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0]))
    assert int(mean["bn.num_batches_tracked"]) == 7
    with pytest.raises(SoupError, match="ingredient 2"):
        average_state_dicts([first, {**second, "w": torch.zeros(3)}])
    with pytest.raises(SoupError, match="ingredient 2"):
        average_state_dicts([first, {"w": second["w"]}])


def card(start, **fields):
    return {"architecture": "paper", "model_args": {"age_bins": 12}, "crop": {"scale": 2.2}, "splits": [],
            "licence": "Research use only.", "recipe": {"init_weights": start, "seed": 0}, "sha256": "x",
            "metrics": {"mae": 5.0}, **fields}


def test_the_soups_card_names_its_ingredients_and_drops_their_scores():
    soup = average_cards(["a.pt", "b.pt"], [card("n.pt"), card("n.pt", sha256="y")])
    assert soup["recipe"] == {"weight_average_of": [
        {"weights": "a.pt", "sha256": "x", "recipe": {"init_weights": "n.pt", "seed": 0}},
        {"weights": "b.pt", "sha256": "y", "recipe": {"init_weights": "n.pt", "seed": 0}}]}
    assert "metrics" not in soup and "sha256" not in soup and soup["licence"] == "Research use only."


@pytest.mark.parametrize("other, message", [
    (card("m.pt"), "started from m.pt and a.pt from n.pt"),
    (card(None), "started from random initialisation"),
    (card("n.pt", architecture="ssrnet"), "its architecture differs"),
    (card("n.pt", model_args={"age_bins": 0}), "its model_args differs"),
    (card("n.pt", crop={"scale": 3.2}), "its crop differs"),
    (card("n.pt", splits=[{"dataset": "aaf"}]), "its splits differs"),
])
def test_networks_that_cannot_be_averaged_are_refused(other, message):
    with pytest.raises(SoupError, match=message):
        average_cards(["a.pt", "b.pt"], [card("n.pt"), other])


def test_soup_command_averages_fine_tunings_and_scores_the_mean(tmp_path, morph_folder):
    from agegender_ros.weights import load_model

    common = ["--dataset", "morph2", "--root", morph_folder, "--epochs", "1", "--batch-size", "16", "--threads", "1",
              "--no-progress"]
    assert agegender("train", *common, "--out", tmp_path / "start").returncode == 0
    for seed in ("1", "2"):
        tuned = agegender("train", *common, "--seed", seed, "--init-weights", tmp_path / "start" / "model.pt",
                          "--out", tmp_path / f"tuned{seed}")
        assert tuned.returncode == 0, tuned.stderr
    ingredients = [tmp_path / f"tuned{seed}" / "model.pt" for seed in ("1", "2")]
    result = agegender("soup", *ingredients, "--dataset", "morph2", "--root", morph_folder,
                       "--unseen", f"morph2={morph_folder}", "--threads", "1", "--no-progress",
                       "--out", tmp_path / "soup")
    assert result.returncode == 0, result.stderr
    soup, soup_card = load_model(tmp_path / "soup" / "model.pt")
    (first, first_card), (second, _) = (load_model(path) for path in ingredients)
    for key, value in soup.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (first.state_dict()[key] + second.state_dict()[key]) / 2, atol=1e-6), key
    assert [i["weights"] for i in soup_card["recipe"]["weight_average_of"]] == list(map(str, ingredients))
    assert soup_card["splits"] == first_card["splits"] and soup_card["sha256"] != first_card["sha256"]
    # The card's scores are the soup's own, on the held-out faces its ingredients' cards record.
    scored = agegender("evaluate", "--dataset", "morph2", "--root", morph_folder, "--weights",
                       tmp_path / "soup" / "model.pt", "--protocol", "kfold5", "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["mae"] == pytest.approx(soup_card["metrics"]["mae"], abs=1e-4)
    assert soup_card["metrics_unseen"]["morph2"]["n"] == 240
    assert agegender("report", tmp_path / "soup").returncode == 0
    # A network from another start, or a dataset the weights never trained on, is a one-line error.
    morph = ["--dataset", "morph2", "--root", morph_folder]
    for weights, datasets, message in (
            ([*ingredients, tmp_path / "start" / "model.pt"], morph, "only fine-tunings of the same start"),
            (ingredients, [*morph, "--dataset", "fgnet", "--root", morph_folder], "record no split of it")):
        refused = agegender("soup", *weights, *datasets, "--out", tmp_path / "refused")
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr
        assert not (tmp_path / "refused").exists()
    # Writing the soup over one of its ingredients is refused before anything is read or written.
    before = ingredients[0].read_bytes()
    refused = agegender("soup", *ingredients, *morph, "--out", ingredients[0].parent)
    assert refused.returncode == 2 and "would overwrite its ingredient" in refused.stderr
    assert ingredients[0].read_bytes() == before
