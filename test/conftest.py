"""Shared fixtures: where the real data is, bundled sample photos, and throw-away weights."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLES = REPO / "agegender_ros" / "samples"


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Keep exported ONNX files and preprocessing caches out of ~/.cache during tests."""
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path_factory.getbasetemp() / "agegender-cache"))


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """Randomly initialised paper-net weights with a proper model card (for pipeline tests, not accuracy)."""
    import torch

    from agegender_ros.model import create_model
    from agegender_ros.weights import save_weights

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random.pt"
    save_weights(create_model("paper"), path, {"architecture": "paper", "model_args": {},
                                               "training_data": "random init (test)"})
    return path


def shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not present (the real datasets live in ../shared/data beside the repo)")
    return path
