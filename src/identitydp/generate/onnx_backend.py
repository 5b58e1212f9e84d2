"""The renderers on ONNX Runtime: the same networks and weights, faster on CPU than torch and
without importing it.

The committed graphs (``identitydp_generator.graph.onnx`` for v1, ``identitydp_renderer_v2.graph.onnx``
for v2, from ``scripts/export_onnx.py``) hold no weights; :mod:`identitydp.models.onnx_graph` feeds it the generator's checksummed safetensors.
Outputs equal torch's to ~1e-5 (``tests/test_onnx_backend.py`` checks it on a real face).
:func:`load_int8_renderer` loads the same renderer with int8 convolutions
(``scripts/quantize_renderer.py``; about 1.4x faster on a VNNI CPU, outputs ~2 levels of 255 from fp32).
Nothing here imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..models.onnx_graph import OnnxGraph, load_registered

log = logging.getLogger(__name__)

GRAPH_NAME = "identitydp_generator_onnx"
INDEX_NAME = "identitydp_generator_onnx_index"


class OnnxRenderer:
    """(x (N, 3, S, S) float32 in [-1, 1], z (N, 128) float32 unit identities) -> (N, 3, S, S) float32."""

    def __init__(self, graph: OnnxGraph) -> None:
        self.graph = graph
        self.size = int(graph.spec["inputs"]["x"][2])

    def __call__(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.graph(x=x, z=z)


class OnnxInpaintRenderer:
    """The v2 renderer: (x (N, 3, S, S) in [-1, 1], mask (N, 1, S, S), sketch (N, 5, S, S),
    z (N, 128), noise: (N, 1, s, s) standard normal maps of :attr:`noise_sides`) -> raw (N, 3, S, S)
    float32 in [-1, 1], the whole rendering (as ``InpaintGenerator.forward(...)[1]``)."""

    def __init__(self, graph: OnnxGraph) -> None:
        self.graph = graph
        inputs = graph.spec["inputs"]
        self.size = int(inputs["x"][2])
        self.noise_sides = [int(inputs[f"n{i}"][2]) for i in range(sum(k.startswith("n") and k[1:].isdigit() for k in inputs))]

    def __call__(self, x: np.ndarray, mask: np.ndarray, sketch: np.ndarray, z: np.ndarray,
                 noise: list[np.ndarray]) -> np.ndarray:
        return self.graph(x=x, mask=mask, sketch=sketch, z=z, **{f"n{i}": n for i, n in enumerate(noise)})


V2_GRAPH_NAME = "identitydp_renderer_v2_onnx"
V2_INDEX_NAME = "identitydp_renderer_v2_onnx_index"


def load_inpaint_renderer(weights: str | Path, threads: int = 1, defer: bool = False) -> OnnxInpaintRenderer | None:
    """The registered v2 renderer graph fed with ``weights``; ``None`` (logged) when ORT is missing
    or the graph was exported from other weights (then the v2 renderer runs on torch)."""
    graph = load_registered(V2_GRAPH_NAME, V2_INDEX_NAME, weights, threads=threads, defer=defer)
    if graph is None:
        log.info("no ONNX Runtime v2 renderer for %s: it runs on torch", Path(weights).name)
        return None
    return OnnxInpaintRenderer(graph)


INT8_WEIGHTS_NAME = "identitydp_generator_int8"
INT8_GRAPH_NAME = "identitydp_generator_int8_onnx"
INT8_INDEX_NAME = "identitydp_generator_int8_onnx_index"


def load_renderer(weights: str | Path, threads: int = 1, defer: bool = False) -> OnnxRenderer | None:
    """The registered renderer graph fed with ``weights``; ``None`` (logged) when ORT is missing
    or the graph was exported from other weights. ``defer``: build the ORT session on first use."""
    graph = load_registered(GRAPH_NAME, INDEX_NAME, weights, threads=threads, defer=defer)
    if graph is None:
        log.info("no ONNX Runtime renderer for %s: the renderer runs on torch", Path(weights).name)
        return None
    return OnnxRenderer(graph)


def load_int8_renderer(weights: str | Path, threads: int = 1, defer: bool = False) -> OnnxRenderer | None:
    """The registered int8 renderer (``scripts/quantize_renderer.py``) if it was quantized from
    ``weights`` (SHA-256 in its index), else ``None``; ORT missing: ``None`` as well.

    Raises:
        WeightsError: a registered int8 file is missing or corrupt (checksums).
    """
    from ..models.registry import registry, weight_path

    if INT8_WEIGHTS_NAME not in registry():
        return None
    graph = load_registered(INT8_GRAPH_NAME, INT8_INDEX_NAME, weights, threads=threads, defer=defer,
                            runs=weight_path(INT8_WEIGHTS_NAME), tied_by="quantized_from_sha256")
    if graph is None:
        log.info("no int8 renderer quantized from %s: fp32 runs", Path(weights).name)
        return None
    return OnnxRenderer(graph)
