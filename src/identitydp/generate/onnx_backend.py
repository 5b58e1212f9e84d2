"""The v1 renderer on ONNX Runtime: the same network and weights, ~1.5-2x faster on CPU than torch.

The committed graph (``identitydp_generator.graph.onnx``, from ``scripts/export_onnx.py``) holds
no weights; :mod:`identitydp.models.onnx_graph` feeds it the generator's checksummed safetensors.
Outputs equal torch's to ~1e-5 (``tests/test_onnx_backend.py`` checks it on a real face).
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


def load_renderer(weights: str | Path, threads: int = 1, defer: bool = False) -> OnnxRenderer | None:
    """The registered renderer graph fed with ``weights``; ``None`` (logged) when ORT is missing
    or the graph was exported from other weights. ``defer``: build the ORT session on first use."""
    graph = load_registered(GRAPH_NAME, INDEX_NAME, weights, threads=threads, defer=defer)
    if graph is None:
        log.info("no ONNX Runtime renderer for %s: the renderer runs on torch", Path(weights).name)
        return None
    return OnnxRenderer(graph)
