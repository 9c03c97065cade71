"""The torch-free runtime (issue 15): what `pip install .` gives a Jetson user on Python 3.8 / 3.10.

  * the estimator and `agegender predict` never import torch (checked in a subprocess's sys.modules);
  * the ONNX file shipped beside the default weights is recorded in their model card, hash-checked on load, and
    answers as the .pt does on the bundled sample photos (0.05 years, 0.005 P(male));
  * a missing, corrupt or stale ONNX file is refused with its path and the sha256 mismatch;
  * `--backend torch` and the torch-only commands without torch are one-line errors with the install hint;
  * `agegender fetch-detector` edits SCRFD's graph without the `onnx` package, as `onnx` would;
  * the runtime code parses as Python 3.8 and uses nothing newer.

These run in the main venv and in .ci/run's runtime-only venvs (AGEGENDER_RUNTIME_ONLY=1), where only the parity
test skips (it needs torch to read the .pt).
"""
from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agegender_ros.backends import OnnxRuntimeBackend, create_backend
from agegender_ros.weights import (WeightsError, check_weights, checked_onnx, crop_scale, default_weights_path,
                                   read_card)
from conftest import REPO, RUNTIME_ONLY, SAMPLES, require_torch

PACKAGE = REPO / "agegender_ros"
SHIPPED = PACKAGE / "weights" / "paper_aaf_utk.pt"
EXPORT_COMMAND = "agegender export --format onnx"


def run_python(code: str, *args: str, block_torch: bool = False) -> subprocess.CompletedProcess:
    """`python -c code` in a fresh interpreter; block_torch makes `import torch` fail as if it were not installed."""
    prefix = "import sys; sys.modules['torch'] = None\n" if block_torch else ""
    return subprocess.run([sys.executable, "-c", prefix + code, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture()
def shipped_copy(tmp_path) -> Path:
    """A copy of the shipped weights (.pt, .json card, .onnx) to damage."""
    for suffix in (".pt", ".json", ".onnx"):
        shutil.copy(SHIPPED.with_suffix(suffix), tmp_path / SHIPPED.with_suffix(suffix).name)
    return tmp_path / SHIPPED.name


# --------------------------------------------------------------------------------------------------------------
# No torch at run time


def test_estimator_and_predict_import_no_torch():
    code = """
import json, sys
import cv2
from agegender_ros.estimator import Estimator
from agegender_ros.cli import main
estimator = Estimator.create()
faces = estimator(cv2.imread(sys.argv[1]))
code = main(["predict", sys.argv[1], "--json"])
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(json.dumps({"backend": estimator.backend.name, "faces": len(faces), "code": code, "torch": loaded}))
"""
    result = run_python(code, str(SAMPLES / "astronaut.jpg"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["torch"] == [], "the runtime imported torch"
    assert report["backend"] == "onnxruntime" and report["faces"] == 1 and report["code"] == 0
    assert "agegender: network backend onnxruntime (auto" in result.stderr  # auto says what it picked


def test_package_imports_without_torch_and_auto_picks_onnxruntime():
    code = """
import importlib, logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
for name in ("agegender_ros.estimator", "agegender_ros.backends", "agegender_ros.weights", "agegender_ros.faces",
             "agegender_ros.model_io", "agegender_ros.tracking", "agegender_ros.launch_args",
             "agegender_ros.ros_image", "agegender_ros.message_fields", "agegender_ros.assets", "agegender_ros.cli",
             "agegender_ros.acceleration", "agegender_ros.bag"):
    importlib.import_module(name)
from agegender_ros.backends import create_backend
print(create_backend("auto").name)
"""
    result = run_python(code, block_torch=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["onnxruntime"]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("agegender_ros.backends: backend ")]
    assert line.startswith("agegender_ros.backends: backend onnxruntime (skipped tensorrt: TensorRT backend "
                           "unavailable: PyTorch is not installed")


def test_backend_torch_without_torch_is_a_one_line_error_with_the_install_hint():
    code = "from agegender_ros.cli import main; sys.exit(main(sys.argv[1:]))"
    result = run_python(code, "predict", str(SAMPLES / "astronaut.jpg"), "--backend", "torch", block_torch=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: PyTorch is not installed: pip install 'agegender_ros[train]'")
    for command in (["info"], ["export", "--format", "onnx"], ["bench", "--json"]):
        result = run_python(code, *command, block_torch=True)
        assert result.returncode == 2, command
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"`agegender {command[0]}` needs PyTorch" in result.stderr and "pip install" in result.stderr


# --------------------------------------------------------------------------------------------------------------
# The shipped ONNX file


def test_shipped_onnx_is_recorded_in_the_model_card():
    card = read_card(SHIPPED)
    entry = card.get("onnx")
    assert entry, (f"{SHIPPED.with_suffix('.json')} records no ONNX export; after changing the .pt run "
                   f"`{EXPORT_COMMAND}`")
    assert entry["file"] == SHIPPED.with_suffix(".onnx").name
    assert entry["weights_sha256"] == card["sha256"], f"the ONNX file is stale: run `{EXPORT_COMMAND}`"
    assert checked_onnx(SHIPPED, card) == SHIPPED.with_suffix(".onnx")
    assert hashlib.sha256(SHIPPED.with_suffix(".onnx").read_bytes()).hexdigest() == entry["sha256"]
    backend = create_backend("onnxruntime")  # the default weights: those installed (site-packages or this tree)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.onnx_path == default_weights_path().with_suffix(".onnx")


def test_shipped_onnx_matches_the_pt_on_the_bundled_samples():
    require_torch()
    import cv2

    from agegender_ros.estimator import Estimator
    from agegender_ros.faces import create_detector
    from agegender_ros.torch_backend import TorchBackend
    from agegender_ros.weights import load_model

    detector = create_detector("auto")
    card = read_card(SHIPPED)
    onnx_estimator = Estimator(detector, OnnxRuntimeBackend(checked_onnx(SHIPPED, card)), crop_scale=crop_scale(card))
    torch_estimator = Estimator(detector, TorchBackend(load_model(SHIPPED)[0]), crop_scale=crop_scale(card))
    compared = 0
    for photo in sorted(SAMPLES.glob("*.jpg")):
        frame = cv2.imread(str(photo))
        ort_faces, torch_faces = onnx_estimator(frame), torch_estimator(frame)
        assert len(ort_faces) == len(torch_faces) > 0, photo.name
        for a, b in zip(ort_faces, torch_faces):
            assert a.box == b.box
            assert abs(a.age - b.age) <= 0.05, (photo.name, a.age, b.age)
            assert abs(a.p_male - b.p_male) <= 0.005, (photo.name, a.p_male, b.p_male)
            compared += 1
    assert compared >= 20  # the astronaut and the Solvay conference's faces


def test_missing_onnx_is_refused_with_its_path(shipped_copy):
    onnx_file = shipped_copy.with_suffix(".onnx")
    onnx_file.unlink()
    for name in ("onnxruntime", "auto"):  # auto does not quietly fall back to torch: the install is broken
        with pytest.raises(WeightsError) as raised:
            create_backend(name, shipped_copy)
        assert str(onnx_file) in str(raised.value) and "is missing" in str(raised.value)
        assert EXPORT_COMMAND in str(raised.value)


def test_corrupt_onnx_is_refused_with_the_sha256_mismatch(shipped_copy):
    onnx_file = shipped_copy.with_suffix(".onnx")
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    expected = read_card(shipped_copy)["onnx"]["sha256"]
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(WeightsError) as raised:
        create_backend("onnxruntime", shipped_copy)
    message = str(raised.value)
    assert message.startswith(f"{onnx_file} is corrupt or was replaced: sha256 {actual[:12]}...")
    assert f"does not match its model card's {expected[:12]}..." in message
    # The command line: one line naming the file, exit code 2.
    result = subprocess.run([sys.executable, "-m", "agegender_ros.cli", "predict", str(SAMPLES / "astronaut.jpg"),
                             "--weights", str(shipped_copy)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {message}"


def test_onnx_exported_from_other_weights_is_refused(shipped_copy):
    card = json.loads(shipped_copy.with_suffix(".json").read_text())
    card["onnx"]["weights_sha256"] = "0" * 64
    shipped_copy.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="was exported from other weights"):
        create_backend("onnxruntime", shipped_copy)


def test_weights_are_checked_without_torch(shipped_copy):
    path, card = check_weights(shipped_copy)
    assert path == shipped_copy and card["architecture"] == "paper"
    shipped_copy.write_bytes(shipped_copy.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="is corrupt or was replaced"):
        check_weights(shipped_copy)



def test_the_installed_package_ships_the_onnx_file():
    """The package's default weights (in site-packages after `pip install .`) come with their ONNX file."""
    installed = default_weights_path()
    assert installed.name == SHIPPED.name
    for suffix in (".pt", ".json", ".onnx"):
        assert installed.with_suffix(suffix).read_bytes() == SHIPPED.with_suffix(suffix).read_bytes(), suffix


def test_export_beside_the_weights_records_the_onnx_in_the_card(shipped_copy, capsys):
    require_torch()
    from agegender_ros import cli

    card = json.loads(shipped_copy.with_suffix(".json").read_text())
    del card["onnx"]
    shipped_copy.with_suffix(".json").write_text(json.dumps(card))
    shipped_copy.with_suffix(".onnx").unlink()
    assert cli.main(["export", "--format", "onnx", "--weights", str(shipped_copy)]) == 0
    assert Path(capsys.readouterr().out.strip()) == shipped_copy.with_suffix(".onnx")
    entry = read_card(shipped_copy)["onnx"]
    assert entry["sha256"] == hashlib.sha256(shipped_copy.with_suffix(".onnx").read_bytes()).hexdigest()
    assert entry["weights_sha256"] == card["sha256"] and entry["opset"] == 17
    assert create_backend("onnxruntime", shipped_copy).onnx_path == shipped_copy.with_suffix(".onnx")


# --------------------------------------------------------------------------------------------------------------
# SCRFD without the `onnx` package


def test_dynamic_shapes_edit_is_what_the_onnx_package_writes():
    from agegender_ros.assets import dynamic_shapes

    if RUNTIME_ONLY:  # the torch-free venv may lack `onnx`; the full one must have it
        pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Conv", ["input.1", "w"], ["score_8"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["score_8"], ["bbox_8"])],
        "tiny", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("score_8", TensorProto.FLOAT, [1, 2, 640, 640]),
         helper.make_tensor_value_info("bbox_8", TensorProto.FLOAT, [1, 2, 640, 640])],
        [helper.make_tensor("w", TensorProto.FLOAT, [2, 3, 3, 3], np.ones(54, np.float32).tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    original = model.SerializeToString()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in model.graph.output:
        for axis, dim in enumerate(output.type.tensor_type.shape.dim):
            dim.dim_param = f"{output.name}_{axis}"
    assert dynamic_shapes(original) == model.SerializeToString()


def test_scrfd_file_is_the_one_fetch_detector_writes():
    from agegender_ros.assets import SCRFD_DYNAMIC_SHA256
    from agegender_ros.faces import default_scrfd_path

    path = default_scrfd_path()
    if not path.is_file():
        pytest.skip(f"{path} not fetched (agegender fetch-detector)")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SCRFD_DYNAMIC_SHA256


# --------------------------------------------------------------------------------------------------------------
# Python 3.8


RUNTIME_MODULES = sorted(PACKAGE.glob("*.py"))
NEWER_THAN_38 = ("removeprefix", "removesuffix", "functools.cache(", "@cache\n", "zip(strict", "strict=True")


def test_runtime_code_parses_as_python_38_and_uses_nothing_newer():
    problems = []
    for path in RUNTIME_MODULES:
        source = path.read_text()
        name = path.relative_to(REPO)
        try:
            tree = ast.parse(source, str(path), feature_version=(3, 8))
            compile(source, str(path), "exec")  # the running interpreter's own parser (3.8 in .ci/run's venv)
        except SyntaxError as error:
            problems.append(f"{name}:{error.lineno}: {error.msg}")
            continue
        problems += [f"{name}: {token.strip()}" for token in NEWER_THAN_38 if token in source]
        postponed = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
                        and any(alias.name == "annotations" for alias in node.names) for node in tree.body)
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and _is_dict_literal_or_call(node):
                problems.append(f"{name}:{node.lineno}: dict | dict")
            annotations = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                annotations = [a.annotation for a in node.args.args + node.args.kwonlyargs if a.annotation]
                annotations += [node.returns] if node.returns else []
            elif isinstance(node, ast.AnnAssign):
                annotations = [node.annotation]
            if not postponed:
                for annotation in annotations:
                    if _uses_new_generics(annotation):
                        problems.append(f"{name}:{node.lineno}: list[...]/X | Y annotation evaluated at run time "
                                        "(add `from __future__ import annotations`)")
    assert not problems, "\n".join(problems)


def _is_dict_literal_or_call(node: ast.BinOp) -> bool:
    def is_dict(side):
        return isinstance(side, (ast.Dict, ast.DictComp)) or (
            isinstance(side, ast.Call) and isinstance(side.func, ast.Name) and side.func.id == "dict")

    return is_dict(node.left) or is_dict(node.right)


def _uses_new_generics(annotation: ast.AST) -> bool:
    for node in ast.walk(annotation):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in (
                "list", "dict", "tuple", "set", "frozenset", "type"):
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return True
    return False
