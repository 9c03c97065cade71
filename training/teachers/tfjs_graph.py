"""A TensorFlow.js graph model (model.json + .bin weight shards) run by PyTorch, op for op.

tfjs graph models carry a frozen TensorFlow GraphDef (as JSON) and a weights manifest. Rather than re-typing a
network and hoping its layer order matches the file, this module executes the GraphDef itself: every Const
becomes a buffer and every node the PyTorch op that computes what TensorFlow's op does (TF 'SAME' padding
included: with stride 2 it pads 0 before and 1 after on even sizes, unlike PyTorch's symmetric padding). Only the
ops the teachers' graphs use are implemented; any other op is refused by name when the file is loaded, so an
unexpected graph never runs half-understood.

Tensors flow in NCHW (PyTorch's layout); TF's NHWC axes are translated where an op names an axis.
"""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DTYPES = {"float32": np.float32, "int32": np.int32, "float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}
NHWC_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1, -1: 1, -2: 3, -3: 2}


class GraphFormatError(ValueError):
    """The model.json / weight files are not a tfjs graph model this module can run."""


def read_weights(manifest: list[dict], folder: Path) -> dict[str, np.ndarray]:
    """{name: array} from a tfjs weights manifest: shards concatenated in order, entries laid out back to back,
    dequantised (float16 stored; uint8/uint16 stored as q x scale + min)."""
    try:
        buffer = b"".join((folder / path).read_bytes() for group in manifest for path in group["paths"])
    except OSError as error:
        raise GraphFormatError(f"{folder}: weight shard missing or unreadable ({error})") from error
    weights, offset = {}, 0
    for entry in (entry for group in manifest for entry in group["weights"]):
        shape = [int(d) for d in entry["shape"]]
        count = int(np.prod(shape)) if shape else 1
        quantization = entry.get("quantization")
        stored = np.dtype(DTYPES[quantization["dtype"] if quantization else entry["dtype"]])
        size = count * stored.itemsize
        if offset + size > len(buffer):
            raise GraphFormatError(f"{folder}: weight shards end inside {entry['name']!r} (truncated file?)")
        values = np.frombuffer(buffer, stored, count, offset)
        offset += size
        if quantization and quantization["dtype"] != "float16":
            values = values.astype(np.float32) * quantization["scale"] + quantization["min"]
        weights[entry["name"]] = values.astype(DTYPES[entry["dtype"]]).reshape(shape)
    if offset != len(buffer):
        raise GraphFormatError(f"{folder}: {len(buffer) - offset} bytes of weight shards left over (wrong file?)")
    return weights


def _strides(node: dict) -> tuple[int, int]:
    values = [int(i) for i in node["attr"]["strides"]["list"]["i"]]
    return values[1], values[2]


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's 'SAME' padding (before, after) along one axis: the extra pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _fused_ops(node: dict) -> list[str]:
    return [base64.b64decode(op).decode() for op in node["attr"].get("fused_ops", {}).get("list", {}).get("s", [])]


SUPPORTED_OPS = frozenset({"Const", "Placeholder", "Identity", "Conv2D", "DepthwiseConv2dNative", "Add", "AddV2",
                           "Mul", "Relu", "Relu6", "Minimum", "Maximum", "Mean", "_FusedMatMul", "MatMul",
                           "BiasAdd", "Sigmoid", "Softmax"})


class TfjsGraph(nn.Module):
    """A tfjs graph model as a frozen PyTorch module: forward(x NCHW float) -> {output name: tensor}."""

    def __init__(self, model_json: str | Path, outputs: list[str] | None = None):
        super().__init__()
        model_json = Path(model_json)
        try:
            spec = json.loads(model_json.read_text())
            self.nodes = spec["modelTopology"]["node"]
            manifest = spec["weightsManifest"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise GraphFormatError(f"{model_json}: not a tfjs graph model.json ({error})") from error
        unsupported = sorted({node["op"] for node in self.nodes} - SUPPORTED_OPS)
        if unsupported:
            raise GraphFormatError(f"{model_json}: ops this reader does not implement: {', '.join(unsupported)}")
        weights = read_weights(manifest, model_json.parent)
        self.inputs = [node["name"] for node in self.nodes if node["op"] == "Placeholder"]
        self.outputs = outputs or [name.split(":")[0] for name in spec.get("signature", {}).get("outputs", {})]
        self._buffer_names = {}
        for index, node in enumerate(n for n in self.nodes if n["op"] == "Const"):
            if node["name"] not in weights:
                raise GraphFormatError(f"{model_json}: constant {node['name']!r} has no weights")
            value = torch.from_numpy(np.array(weights[node["name"]]))
            if value.ndim == 4 and any(n["op"] in ("Conv2D", "DepthwiseConv2dNative") and n["input"][1] ==
                                       node["name"] for n in self.nodes):
                # HWIO (Conv2D) / HW,C,multiplier (depthwise) -> PyTorch's OIHW, done once here.
                depthwise = any(n["op"] == "DepthwiseConv2dNative" and n["input"][1] == node["name"]
                                for n in self.nodes)
                value = value.permute(2, 3, 0, 1).reshape(-1, 1, value.shape[0], value.shape[1]) if depthwise \
                    else value.permute(3, 2, 0, 1)
            buffer = f"const_{index}"
            self.register_buffer(buffer, value.contiguous())
            self._buffer_names[node["name"]] = buffer
        self._fold_scale_and_bias_into_convolutions()
        consumers: dict[str, int] = {}
        for node in self.nodes:
            for i in node.get("input", []):
                consumers[i.split(":")[0]] = consumers.get(i.split(":")[0], 0) + 1
        # Elementwise ops may overwrite an input that nothing else reads (the graph is a chain): half the memory
        # traffic, which dominates a CPU teacher pass after the convolutions.
        self._in_place = {node["name"] for node in self.nodes
                          if node["op"] in ("Add", "AddV2", "BiasAdd", "Mul", "Relu", "Relu6", "Minimum", "Maximum")
                          and node.get("input") and consumers.get(node["input"][0].split(":")[0]) == 1
                          and node["input"][0].split(":")[0] not in self._buffer_names
                          and node["input"][0].split(":")[0] not in self.inputs}
        self.requires_grad_(False)
        self.eval()

    def _const(self, name: str) -> torch.Tensor | None:
        buffer = self._buffer_names.get(name.split(":")[0])
        return None if buffer is None else getattr(self, buffer)

    def _fold_scale_and_bias_into_convolutions(self) -> None:
        """Conv -> Mul(per-channel const) -> Add(per-channel const), as TF freezes an unfused batch norm, becomes
        one convolution with a scaled kernel and a bias (the same arithmetic up to float rounding)."""
        by_name = {node["name"]: node for node in self.nodes}
        readers: dict[str, list[dict]] = {}
        for node in self.nodes:
            for i in node.get("input", []):
                readers.setdefault(i.split(":")[0], []).append(node)
        self._conv_bias: dict[str, str] = {}
        for node in self.nodes:
            if node["op"] not in ("Conv2D", "DepthwiseConv2dNative") or len(readers.get(node["name"], [])) != 1:
                continue
            kernel_name = node["input"][1].split(":")[0]
            if len(readers[kernel_name]) != 1:
                continue
            follower = readers[node["name"]][0]
            if follower["op"] == "Mul" and self._const(follower["input"][1]) is not None \
                    and self._const(follower["input"][1]).ndim == 1 and len(readers.get(follower["name"], [])) == 1:
                scale = self._const(follower["input"][1])
                kernel = getattr(self, self._buffer_names[kernel_name])
                kernel.mul_(scale.reshape(-1, 1, 1, 1))
                follower["op"], follower["input"] = "Identity", [node["name"]]
                follower = readers[follower["name"]][0]
            if follower["op"] in ("Add", "AddV2", "BiasAdd") and self._const(follower["input"][1]) is not None \
                    and self._const(follower["input"][1]).ndim == 1:
                self._conv_bias[node["name"]] = self._buffer_names[follower["input"][1].split(":")[0]]
                follower["op"], follower["input"] = "Identity", [by_name[follower["input"][0].split(":")[0]]["name"]]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {self.inputs[0]: x}
        for node in self.nodes:
            op, name = node["op"], node["name"]
            if op == "Const":
                values[name] = getattr(self, self._buffer_names[name])
            elif op != "Placeholder":
                args = [values[i.split(":")[0]] for i in node.get("input", []) if not i.startswith("^")]
                values[name] = self._run(op, node, args)
        return {name: values[name] for name in self.outputs}

    @staticmethod
    def _channelwise(tensor: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """A per-channel constant (TF broadcasts it along NHWC's last axis) shaped for NCHW tensors."""
        return other.reshape(-1, 1, 1) if tensor.ndim == 4 and other.ndim == 1 else other

    def _run(self, op: str, node: dict, args: list[torch.Tensor]) -> torch.Tensor:
        if op == "Identity":
            return args[0]
        if op in ("Conv2D", "DepthwiseConv2dNative"):
            x, kernel = args
            stride_h, stride_w = _strides(node)
            padding = node["attr"]["padding"]["s"]
            if base64.b64decode(padding) == b"SAME":
                top, bottom = _same_padding(x.shape[2], kernel.shape[2], stride_h)
                left, right = _same_padding(x.shape[3], kernel.shape[3], stride_w)
                x = F.pad(x, (left, right, top, bottom))
            groups = x.shape[1] if op == "DepthwiseConv2dNative" else 1
            bias = self._conv_bias.get(node["name"])
            return F.conv2d(x, kernel, None if bias is None else getattr(self, bias), stride=(stride_h, stride_w),
                            groups=groups)
        in_place = node["name"] in self._in_place
        if op in ("Add", "AddV2", "BiasAdd"):
            other = self._channelwise(args[0], args[1])
            return args[0].add_(other) if in_place else args[0] + other
        if op == "Mul":
            other = self._channelwise(args[0], args[1])
            return args[0].mul_(other) if in_place else args[0] * other
        if op == "Relu":
            return F.relu(args[0], inplace=in_place)
        if op == "Relu6":
            return F.relu6(args[0], inplace=in_place)
        if op in ("Minimum", "Maximum"):
            other = self._channelwise(args[0], args[1])
            if other.ndim == 0 and in_place:  # ReLU6 as TF writes it: Relu, then Minimum(6), Maximum(0)
                return args[0].clamp_(max=float(other)) if op == "Minimum" else args[0].clamp_(min=float(other))
            return torch.minimum(args[0], other) if op == "Minimum" else torch.maximum(args[0], other)
        if op == "Mean":
            axes = [int(a) for a in np.atleast_1d(args[1].cpu().numpy())]
            if args[0].ndim == 4:
                axes = [NHWC_TO_NCHW[a] for a in axes]
            return args[0].mean(dim=axes, keepdim=node["attr"].get("keep_dims", {}).get("b", False))
        if op in ("MatMul", "_FusedMatMul"):
            a, b = args[0], args[1]
            if node["attr"].get("transpose_a", {}).get("b"):
                a = a.t()
            if node["attr"].get("transpose_b", {}).get("b"):
                b = b.t()
            out = a @ b
            for fused, extra in zip(_fused_ops(node), args[2:] + [None]):
                if fused == "BiasAdd":
                    out = out + extra
                elif fused == "Relu":
                    out = F.relu(out)
                else:
                    raise GraphFormatError(f"{node['name']}: fused op {fused!r} is not implemented")
            return out
        if op == "Sigmoid":
            return torch.sigmoid(args[0])
        if op == "Softmax":
            return torch.softmax(args[0], dim=-1)
        raise GraphFormatError(f"{node['name']}: op {op!r} is not implemented")
