"""dlib's ResNet v1 descriptor on ONNX Runtime, fed the registered (uint8-quantised) weights.

The same network as :class:`identitydp.models.dlib_resnet.DlibEncoder` (graph exported by
``scripts/export_onnx.py``, weights dequantised in NumPy exactly as the torch loader does);
descriptors agree with torch's to ~1e-5 (``tests/test_onnx_backend.py``). No torch here.
"""

from __future__ import annotations

import numpy as np

from .dlib_chip import EMBEDDING_DIM, INPUT_SIZE
from .onnx_graph import load_registered

WEIGHTS_NAME = "dlib_resnet"
GRAPH_NAME = "dlib_resnet_onnx"
INDEX_NAME = "dlib_resnet_onnx_index"


class DlibOnnxEncoder:
    """``encoder(chips)``: (N, 150, 150, 3) uint8 RGB dlib chips -> (N, 128) float32 raw descriptors."""

    def __init__(self, graph) -> None:
        self.graph = graph

    @classmethod
    def load(cls, threads: int = 1, defer: bool = False) -> "DlibOnnxEncoder | None":
        """The registered encoder, or ``None`` when ORT is missing or the graph does not match the weights.

        ``defer``: build the ORT session on first use (see :class:`~identitydp.models.onnx_graph.OnnxGraph`).

        Raises:
            WeightsError: registered files missing or corrupt.
        """
        from .registry import weight_path

        graph = load_registered(GRAPH_NAME, INDEX_NAME, weight_path(WEIGHTS_NAME), threads=threads, defer=defer)
        return None if graph is None else cls(graph)

    def __call__(self, chips: np.ndarray | list[np.ndarray]) -> np.ndarray:
        array = np.stack(list(chips)) if isinstance(chips, list) else np.asarray(chips)
        if array.ndim != 4 or array.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) chips, got {array.shape}")
        if len(array) == 0:
            return np.zeros((0, EMBEDDING_DIM), np.float32)
        return self.graph(x=array.transpose(0, 3, 1, 2).astype(np.float32))
