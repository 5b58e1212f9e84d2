"""The v1 renderer on ONNX Runtime: the same network and weights, ~1.5-2x faster on CPU than torch.

The committed graph (``identitydp_generator.graph.onnx``, from ``scripts/export_onnx.py``) holds
no weights; :mod:`identitydp.models.onnx_graph` feeds it the generator's checksummed safetensors.
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
