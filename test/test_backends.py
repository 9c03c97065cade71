"""Backends (issue 5): ONNX Runtime vs torch parity on real faces, ONNX export with a dynamic batch axis, `auto`
selection and its log, the TensorRT path (parity and engine cache where CUDA + torch2trt exist; a clear
BackendUnavailable elsewhere), the engine cache key, ONNX Runtime provider selection for network and detector, and
`agegender bench --json`.

Weights: random-init paper nets (no trained weights are needed). Their BatchNorm statistics are taken from the
real face crops below, so activations have realistic scales and outputs differ from face to face; otherwise
every face gets the same age to 4 digits and a parity test would compare constants.
"""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, require_torch

torch = require_torch()  # every test here compares with, or exports from, the torch model

from agegender_ros import cli, faces  # noqa: E402
from agegender_ros.backends import BackendUnavailable, OnnxRuntimeBackend, create_backend  # noqa: E402
from agegender_ros.model import create_model, normalise_crops  # noqa: E402
from agegender_ros.torch_backend import TorchBackend, export_onnx  # noqa: E402
from agegender_ros.tensorrt_backend import (KEY_FIELDS, candidate_engine_paths, check_cached_engine,  # noqa: E402
                                            engine_cache_key, engine_file_name, engine_key_fields, require_tensorrt,
                                            sidecar_path, write_sidecar)
from agegender_ros.weights import default_weights_path, load_model, save_weights, sha256_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "agegender_ros" / "samples"


def _tensorrt_missing() -> str | None:
    try:
        require_tensorrt()
    except BackendUnavailable as error:
        return str(error)
    return None


TENSORRT_MISSING = _tensorrt_missing()
needs_tensorrt = pytest.mark.skipif(TENSORRT_MISSING is not None, reason=f"{TENSORRT_MISSING}")
without_tensorrt = pytest.mark.skipif(TENSORRT_MISSING is None, reason="TensorRT is available on this machine")


@pytest.fixture(autouse=True)
def private_caches(tmp_path, monkeypatch):
    """Exported ONNX files and engines go to a temporary folder, never ~/.cache."""
    monkeypatch.setenv("AGEGENDER_CACHE", str(tmp_path / "agegender-cache"))
    monkeypatch.setenv("AGEGENDER_TRT_CACHE", str(tmp_path / "ort-trt-cache"))


# --------------------------------------------------------------------------------------------------------------
# Real faces and weights


def _detector():
    try:
        return faces.create_detector("auto")
    except faces.DetectorUnavailable as error:
        pytest.skip(f"no face detector: {error}")


def _crops(paths, detector, best_only: bool) -> list:
    import cv2

    crops = []
    for path in paths:
        image = cv2.imread(str(path))
        assert image is not None, path
        detections = sorted(detector.detect(image), key=lambda d: -d.score)
        for detection in detections[:1] if best_only else detections:
            crops.append(faces.align_crop(image, detection))
    return crops


@pytest.fixture(scope="session")
def sample_faces() -> np.ndarray:
    """Network input of every face the default detector finds in the bundled photos (astronaut + Solvay 1927)."""
    crops = _crops(sorted(SAMPLES.glob("*.jpg")), _detector(), best_only=False)
    assert len(crops) >= 20, "the bundled photos hold 1 + ~29 faces"
    return normalise_crops(np.stack(crops))


@pytest.fixture(scope="session")
def dataset_faces() -> np.ndarray:
    """A few dozen AAF + UTKFace photos from ../shared/data (skipped where that is absent)."""
    folders = [SHARED_DATA / "aaf" / "aglined faces", SHARED_DATA / "utkface" / "crop_part1"]
    present = [f for f in folders if f.is_dir()]
    if not present:
        pytest.skip(f"no AAF / UTKFace photos under {SHARED_DATA} (the real datasets live in ../shared/data)")
    paths = []
    for folder in present:
        files = sorted(folder.glob("*.jpg"))
        paths += files[:: max(1, len(files) // 24)][:24]
    crops = _crops(paths, _detector(), best_only=True)
    assert len(crops) >= 0.8 * len(paths), f"the detector found faces in only {len(crops)} of {len(paths)} photos"
    return normalise_crops(np.stack(crops))


@pytest.fixture(scope="session")
def weights(tmp_path_factory, sample_faces) -> Path:
    """Random-init paper net, BatchNorm statistics from the sample faces, saved with its model card."""
    torch.manual_seed(0)
    model = create_model("paper")
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the one pass
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(sample_faces))
    path = tmp_path_factory.mktemp("weights") / "paper_random.pt"
    save_weights(model.eval(), path, {"architecture": "paper", "model_args": {},
                                      "training_data": "random init (test); BatchNorm statistics from the sample "
                                                       "photos' faces"})
    return path


def _parity_weights(request, weights) -> Path:
    if request.param == "trained":
        path = default_weights_path()
        if not path.is_file():
            pytest.skip(f"no trained default weights at {path} yet")
        return path
    return weights


@pytest.fixture(params=["random-init", "trained"])
def parity_weights(request, weights) -> Path:
    return _parity_weights(request, weights)


def _outputs_differ_between_faces(ages: np.ndarray) -> None:
    assert ages.std() > 0.1, "the test net gives every face the same age: parity would compare constants"


# --------------------------------------------------------------------------------------------------------------
# ONNX Runtime


def _torch_and_onnx(weights_path: Path, tmp_path: Path):
    model, _ = load_model(weights_path)
    return TorchBackend(model), OnnxRuntimeBackend(export_onnx(model, tmp_path / "model.onnx"))


def _assert_onnx_parity(torch_backend, onnx_backend, batch):
    age_t, p_t, std_t = torch_backend(batch)
    age_o, p_o, std_o = onnx_backend(batch)
    if len(batch) > 1:
        _outputs_differ_between_faces(age_t)
    assert np.abs(age_o - age_t).max() < 0.01, "age differs by >= 0.01 years"
    assert np.abs(p_o - p_t).max() < 1e-4, "P(male) differs by >= 1e-4"
    assert np.abs(std_o - std_t).max() < 0.01


def test_onnxruntime_matches_torch_on_bundled_photo_faces(parity_weights, sample_faces, tmp_path):
    torch_backend, onnx_backend = _torch_and_onnx(parity_weights, tmp_path)
    _assert_onnx_parity(torch_backend, onnx_backend, sample_faces)
    # One face at a time too (a frame with one person).
    for i in range(3):
        _assert_onnx_parity(torch_backend, onnx_backend, sample_faces[i:i + 1])


def test_onnxruntime_matches_torch_on_dataset_faces(parity_weights, dataset_faces, tmp_path):
    torch_backend, onnx_backend = _torch_and_onnx(parity_weights, tmp_path)
    _assert_onnx_parity(torch_backend, onnx_backend, dataset_faces)


def test_label_distribution_model_exports_and_engine_outputs_only_what_the_ensemble_reads(sample_faces, tmp_path):
    from agegender_ros.tensorrt_backend import ForwardOutputs

    torch.manual_seed(0)
    model = create_model("paper", age_bins=12)
    for module in model.modules():  # BatchNorm statistics from these faces, so that faces get different ages
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.from_numpy(sample_faces))
        for head in (model.top_fc[-1], model.low_head, model.age_virtual):
            head.weight.mul_(20)  # a random head gives near-uniform bin probabilities: the same age for all
    model.eval()
    path = tmp_path / "bins.pt"
    save_weights(model, path, {"architecture": "paper", "model_args": {"age_bins": 12}, "training_data": "none"})
    torch_backend, onnx_backend = _torch_and_onnx(path, tmp_path)
    _assert_onnx_parity(torch_backend, onnx_backend, sample_faces)
    # Heads weighted unequally in the ensemble (buffers of the weights file) export with their weights.
    model.set_ensemble_weights(age={"virtual": 0, "low": 0.25}, gender={"virtual": 0, "low": 0.5})
    weighted = tmp_path / "weighted" / "bins.pt"
    weighted.parent.mkdir()
    save_weights(model, weighted, {"architecture": "paper", "model_args": {"age_bins": 12}, "training_data": "none"})
    weighted_torch, weighted_onnx = _torch_and_onnx(weighted, tmp_path / "weighted")
    _assert_onnx_parity(weighted_torch, weighted_onnx, sample_faces)
    assert not np.allclose(weighted_torch(sample_faces)[0], torch_backend(sample_faces)[0])
    assert ForwardOutputs(model).output_names == tuple(sorted(f"{h}_{t}" for h in ("final", "virtual", "low")
                                                              for t in ("age", "gender")))


def test_export_onnx_via_cli_has_a_dynamic_batch_axis(weights, sample_faces, tmp_path, capsys):
    import onnx

    out = tmp_path / "exported" / "paper.onnx"
    assert cli.main(["export", "--format", "onnx", "--weights", str(weights), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    graph = onnx.load(str(out)).graph
    (faces_input,) = [i for i in graph.input if i.name == "faces"]
    batch_dim = faces_input.type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value, "the batch axis must be symbolic"
    onnx_backend = OnnxRuntimeBackend(out)
    torch_backend = TorchBackend(load_model(weights)[0])
    for batch in (1, 7):
        age, p_male, age_std = onnx_backend(sample_faces[:batch])
        assert age.shape == p_male.shape == age_std.shape == (batch,)
        np.testing.assert_allclose(age, torch_backend(sample_faces[:batch])[0], atol=0.01)


def test_export_onnx_default_output_is_beside_the_weights(weights, tmp_path, capsys):
    import shutil

    local = tmp_path / "w.pt"
    shutil.copy(weights, local)
    shutil.copy(weights.with_suffix(".json"), local.with_suffix(".json"))
    assert cli.main(["export", "--format", "onnx", "--weights", str(local)]) == 0
    assert Path(capsys.readouterr().out.strip()) == local.with_suffix(".onnx")
    assert local.with_suffix(".onnx").is_file()


def test_export_with_missing_weights_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["export", "--format", "onnx", "--weights", str(tmp_path / "nope.pt")]) == 2
    assert "nope.pt" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# Backend selection


@without_tensorrt
def test_auto_picks_onnxruntime_and_logs_why_tensorrt_was_skipped(weights, caplog):
    caplog.set_level(logging.INFO, logger="agegender_ros.backends")
    backend = create_backend("auto", weights)
    assert backend.name == "onnxruntime"
    (message,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend ")]
    assert message.startswith("backend onnxruntime (skipped tensorrt: TensorRT backend unavailable")
    assert "CUDA" in message or "torch2trt" in message


@without_tensorrt
def test_tensorrt_backend_unavailable_here_says_what_is_missing(weights):
    with pytest.raises(BackendUnavailable) as raised:
        create_backend("tensorrt", weights)
    message = str(raised.value)
    assert message.startswith("TensorRT backend unavailable: ")
    missing = [name for name in ("tensorrt", "torch2trt") if importlib.util.find_spec(name) is None]
    for name in missing:  # a package that is not installed is named (found without importing torch)
        assert f"`{name}`" in message and "not installed" in message
    if not missing and not torch.cuda.is_available():
        assert "no CUDA device" in message


@without_tensorrt
def test_export_tensorrt_without_tensorrt_is_a_clear_error(weights, tmp_path, capsys):
    code = cli.main(["export", "--format", "tensorrt", "--weights", str(weights), "--out", str(tmp_path / "e.pth")])
    assert code == 2
    err = capsys.readouterr().err
    assert "TensorRT backend unavailable" in err and "Traceback" not in err
    assert not (tmp_path / "e.pth").exists()


# --------------------------------------------------------------------------------------------------------------
# TensorRT engine cache key and sidecar (pure logic, no TensorRT needed)


BASE = dict(weights_sha256="a" * 64, tensorrt_version="8.2.1.8", gpu_name="NVIDIA Tegra X1", fp16=True,
            max_batch_size=32)


def test_tensorrt_cache_key_is_stable_and_changes_with_every_key_field():
    key = engine_cache_key(engine_key_fields(**BASE))
    assert key == engine_cache_key(engine_key_fields(**BASE)) and len(key) == 16
    changes = {"weights_sha256": "b" * 64, "tensorrt_version": "8.5.2", "gpu_name": "NVIDIA H100 80GB HBM3",
               "fp16": False, "max_batch_size": 8}
    keys = {engine_cache_key(engine_key_fields(**{**BASE, name: value})) for name, value in changes.items()}
    assert len(keys) == len(changes) and key not in keys
    assert engine_key_fields(**BASE)["precision"] == "fp16"
    assert engine_key_fields(**{**BASE, "fp16": False})["precision"] == "fp32"


def test_tensorrt_engine_cache_lives_beside_the_weights_then_in_the_cache_folder(tmp_path, monkeypatch):
    fields = engine_key_fields(**BASE)
    weights_path = tmp_path / "models" / "paper.pt"
    beside, fallback = candidate_engine_paths(weights_path, fields)
    assert beside.parent == weights_path.parent.resolve()
    assert fallback.parent == tmp_path / "agegender-cache" / "tensorrt"
    assert beside.name == fallback.name == engine_file_name(weights_path, fields)
    assert beside.name.startswith("paper-fp16-") and engine_cache_key(fields) in beside.name
    other = engine_key_fields(**{**BASE, "gpu_name": "NVIDIA Orin"})
    assert engine_file_name(weights_path, other) != beside.name


def _fake_engine(path: Path, fields) -> Path:
    """Bytes standing in for an engine file: only the cache bookkeeping is under test here."""
    path.write_bytes(b"serialized engine bytes")
    write_sidecar(path, fields, {"weights": "paper.pt"})
    return path


def test_tensorrt_cached_engine_used_only_when_everything_matches(tmp_path):
    fields = engine_key_fields(**BASE)
    engine = _fake_engine(tmp_path / "paper.trt.pth", fields)
    assert sidecar_path(engine) == tmp_path / "paper.trt.json"
    assert json.loads(sidecar_path(engine).read_text())["key"] == engine_cache_key(fields)
    assert check_cached_engine(engine, fields) == (True, "matches")

    for name, value in {"weights_sha256": "c" * 64, "gpu_name": "NVIDIA GeForce RTX 3090",
                        "fp16": False, "tensorrt_version": "10.0.1", "max_batch_size": 4}.items():
        expected = engine_key_fields(**{**BASE, name: value})
        usable, reason = check_cached_engine(engine, expected)
        field = "precision" if name == "fp16" else name
        assert not usable and field in reason, (name, reason)


def test_tensorrt_cached_engine_foreign_or_tampered_is_rejected(tmp_path):
    fields = engine_key_fields(**BASE)
    assert check_cached_engine(tmp_path / "missing.trt.pth", fields)[0] is False

    no_sidecar = tmp_path / "foreign.trt.pth"
    no_sidecar.write_bytes(b"an engine from somewhere else")
    usable, reason = check_cached_engine(no_sidecar, fields)
    assert not usable and "sidecar" in reason

    engine = _fake_engine(tmp_path / "replaced.trt.pth", fields)
    engine.write_bytes(b"another engine, same name")
    usable, reason = check_cached_engine(engine, fields)
    assert not usable and "sha256" in reason

    engine = _fake_engine(tmp_path / "other-format.trt.pth", fields)
    meta = json.loads(sidecar_path(engine).read_text())
    sidecar_path(engine).write_text(json.dumps({**meta, "format": "something else"}))
    assert check_cached_engine(engine, fields)[0] is False

    engine = _fake_engine(tmp_path / "key-field-missing.trt.pth", fields)
    meta = json.loads(sidecar_path(engine).read_text())
    del meta["gpu_name"]
    sidecar_path(engine).write_text(json.dumps(meta))
    assert check_cached_engine(engine, fields)[0] is False
    assert set(KEY_FIELDS) <= set(fields)


def test_tensorrt_key_follows_the_weights_file(weights, tmp_path):
    import shutil

    copy = tmp_path / "copy.pt"
    shutil.copy(weights, copy)
    same = engine_key_fields(sha256_file(copy), "8.2", "GPU", True, 32)
    assert engine_cache_key(same) == engine_cache_key(engine_key_fields(sha256_file(weights), "8.2", "GPU", True, 32))
    copy.write_bytes(copy.read_bytes() + b"\0")  # retrained / replaced weights -> another key -> rebuild
    assert engine_cache_key(engine_key_fields(sha256_file(copy), "8.2", "GPU", True, 32)) != engine_cache_key(same)


# --------------------------------------------------------------------------------------------------------------
# TensorRT on a CUDA machine with torch2trt (skips here with the reason)


@needs_tensorrt
def test_tensorrt_matches_torch_on_real_faces(request, weights, sample_faces):
    batches = [sample_faces]
    try:
        batches.append(request.getfixturevalue("dataset_faces"))
    except pytest.skip.Exception:
        pass
    for weights_path in [weights] + ([default_weights_path()] if default_weights_path().is_file() else []):
        model, _ = load_model(weights_path)
        # max batch 8 < the ~30 faces of the Solvay photo: the slicing of large batches is exercised too.
        trt_backend = create_backend("tensorrt", weights_path, max_batch_size=8)
        assert trt_backend.name == "tensorrt" and trt_backend.precision == "fp16"
        batch = np.concatenate(batches)
        age_t, p_t, _ = TorchBackend(model)(batch)
        age_r, p_r, _ = trt_backend(batch)
        assert age_r.shape == age_t.shape
        assert np.abs(age_r - age_t).max() < 0.5, "TensorRT age differs from torch by >= 0.5 years"
        same = (p_r >= 0.5) == (p_t >= 0.5)
        if weights_path == weights:
            # A random-init net's gender logits are ~100x smaller than a trained one's: faces within 0.005 of
            # P(male) = 0.5 sit inside FP16 rounding of the decision and say nothing about the engine.
            same = same[np.abs(p_t - 0.5) > 0.005]
        assert same.mean() >= 0.99, f"same gender decision on only {same.mean():.1%} of faces"


@needs_tensorrt
def test_tensorrt_engine_cached_reused_and_rebuilt_when_stale(weights, tmp_path, caplog):
    import shutil

    from agegender_ros.tensorrt_backend import TensorRTBackend

    local = tmp_path / "paper.pt"
    shutil.copy(weights, local)
    shutil.copy(weights.with_suffix(".json"), local.with_suffix(".json"))
    model, _ = load_model(local)
    caplog.set_level(logging.INFO, logger="agegender_ros.tensorrt_backend")
    first = TensorRTBackend.for_weights(model, local, max_batch_size=4)
    assert first.engine_path.parent == tmp_path and sidecar_path(first.engine_path).is_file()
    meta = json.loads(sidecar_path(first.engine_path).read_text())
    assert meta["gpu_name"] == torch.cuda.get_device_name(0) and meta["precision"] == "fp16"

    caplog.clear()
    TensorRTBackend.for_weights(model, local, max_batch_size=4)
    assert any("using cached engine" in r.getMessage() for r in caplog.records)

    sidecar_path(first.engine_path).write_text(json.dumps({**meta, "gpu_name": "some other GPU"}))
    caplog.clear()
    rebuilt = TensorRTBackend.for_weights(model, local, max_batch_size=4)
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert json.loads(sidecar_path(rebuilt.engine_path).read_text())["gpu_name"] == torch.cuda.get_device_name(0)

    fp32 = TensorRTBackend.for_weights(model, local, fp16=False, max_batch_size=4)
    assert fp32.engine_path != first.engine_path and fp32.precision == "fp32"


@needs_tensorrt
def test_export_tensorrt_via_cli_then_backend_uses_that_engine(weights, tmp_path, caplog):
    out = tmp_path / "engine.trt.pth"
    assert cli.main(["export", "--format", "tensorrt", "--weights", str(weights), "--out", str(out),
                     "--max-batch-size", "8"]) == 0
    assert out.is_file() and sidecar_path(out).is_file()
    caplog.set_level(logging.INFO, logger="agegender_ros.tensorrt_backend")
    create_backend("tensorrt", weights, engine=out, max_batch_size=8)
    assert any("using cached engine" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------------------------
# ONNX Runtime execution providers (network and detector): selection with a patched provider list


@pytest.mark.parametrize("available, prefer_gpu, expected", [
    (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], True,
     ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], True, ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], False, ["CPUExecutionProvider"]),
    (["AzureExecutionProvider", "CPUExecutionProvider"], True, ["CPUExecutionProvider"]),
])
def test_onnx_providers_fastest_first(monkeypatch, tmp_path, available, prefer_gpu, expected):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(available))
    providers = faces.onnxruntime_providers(prefer_gpu)
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == expected
    for provider in providers:
        if isinstance(provider, tuple):  # TensorRT: FP16 with an engine cache (built once on a Jetson)
            options = provider[1]
            assert options["trt_fp16_enable"] and options["trt_engine_cache_enable"]
            assert options["trt_engine_cache_path"] == str(tmp_path / "ort-trt-cache")


@pytest.fixture
def recorded_sessions(monkeypatch):
    """ONNX Runtime reports TensorRT + CUDA; sessions record the providers they were asked for and run on CPU."""
    import onnxruntime

    real_session = onnxruntime.InferenceSession
    asked = []

    def session(path, options=None, providers=None, **kwargs):
        asked.append(providers)
        return real_session(path, options, providers=["CPUExecutionProvider"], **kwargs)

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    return asked


def _names(providers):
    return [p[0] if isinstance(p, tuple) else p for p in providers]


def test_onnx_detector_and_network_ask_for_tensorrt_then_cuda(recorded_sessions, weights, tmp_path):
    if not faces.default_scrfd_path().is_file():
        pytest.skip(f"SCRFD weights not fetched ({faces.default_scrfd_path()}); run `agegender fetch-detector`")
    faces.ScrfdDetector()
    model, _ = load_model(weights)
    OnnxRuntimeBackend(export_onnx(model, tmp_path / "m.onnx"))
    assert len(recorded_sessions) == 2
    for providers in recorded_sessions:
        assert _names(providers) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


# --------------------------------------------------------------------------------------------------------------
# agegender bench


def test_bench_json_one_line_with_every_part(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("AGEGENDER_WEIGHTS", str(tmp_path / "no-default-weights.pt"))
    code = cli.main(["bench", "--json", "--backends", "tensorrt,onnxruntime,torch", "--batch-sizes", "1,4",
                     "--repeats", "3", "--seconds", "0.05"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["weights"] == "random-init"
    for name in ("onnxruntime", "torch"):
        result = report["backends"][name]
        assert set(result["faces_per_s"]) == set(result["latency_ms"]) == {"1", "4"}
        assert all(v > 0 for v in result["faces_per_s"].values())
    if TENSORRT_MISSING:
        assert "TensorRT backend unavailable" in report["backends"]["tensorrt"]["error"]
    ssrnet = report["ssrnet"]
    assert ssrnet["weights"] == "random-init" and ssrnet["onnxruntime"]["faces_per_s"]["4"] > 0
    assert set(ssrnet["speed_over_paper"]["onnxruntime"]) == {"1", "4"}
    e2e = report["end_to_end"]
    assert e2e["frame"] == "640x480" and e2e["fps_1_face"] > 0 and e2e["fps_5_faces"] > 0
    assert e2e["faces_found"] == {"0": 0, "1": 1, "5": 5}, "the pasted real faces must all be detected"
    assert e2e["fps_no_face"] > 0
    assert set(e2e["flip_tta_frame_ms"]) == {"1", "5"} and all(v > 0 for v in e2e["flip_tta_frame_ms"].values())
    assert e2e["detector"] and e2e["backend"] in ("tensorrt", "onnxruntime")
    assert "end_to_end_fps_1_face" in report["goals"] and report["device"]


def test_bench_reports_a_missing_ssrnet_instead_of_crashing(monkeypatch, tmp_path):
    from agegender_ros import acceleration, model

    model.available_models()  # baselines registered
    monkeypatch.delitem(model._REGISTRY, "ssrnet")
    args = cli.build_parser().parse_args(["bench", "--backends", "onnxruntime"])
    result = acceleration.bench_ssrnet(["onnxruntime"], {"backends": {"onnxruntime": {}}}, tmp_path, [1], args)
    assert "ssrnet" in result["error"]


def test_bench_frames_hold_real_faces_on_a_plain_background():
    from agegender_ros.acceleration import BACKGROUND_BGR, build_frames

    detector = _detector()
    frames = build_frames(detector)
    for key, count in (("1", 1), ("5", 5)):
        frame = frames[key]
        assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
        assert (frame[0, 0] == BACKGROUND_BGR).all()
        assert len(detector.detect(frame)) == count
        assert len(frames["sources"][key]) == count
