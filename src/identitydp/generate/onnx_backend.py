"""The v1 renderer on ONNX Runtime: the same network, the same weights, ~1.5-2x faster on CPU.

The committed graph (``identitydp_generator.graph.onnx``, made by ``scripts/export_onnx.py``)
holds no weights: each initializer is declared as external data, and this module hands ORT the
tensors of the checksummed generator safetensors instead
(``SessionOptions.add_external_initializers``), as the index file
(``identitydp_generator.onnx.json``) maps them. The outputs equal torch's to ~1e-5 (the test
suite checks it on a real face); nothing here imports torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import WeightsError

log = logging.getLogger(__name__)

GRAPH_NAME = "identitydp_generator_onnx"
INDEX_NAME = "identitydp_generator_onnx_index"


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` can be imported (it is a default dependency; a stripped-down
    install without it falls back to torch)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OnnxRenderer:
    """(x (N, 3, S, S) float32 in [-1, 1], z (N, 128) float32 unit identities) -> (N, 3, S, S) float32.

    Args:
        graph: the weight-free ONNX graph.
        index: its index JSON (initializer -> safetensors key).
        weights: the generator safetensors (already checksum-verified by the caller).
        threads: ORT intra-op threads (the CLI's ``--threads``).

    Raises:
        WeightsError: the graph does not fit the weights (another architecture, a missing tensor),
            or ORT cannot build the session.
    """

    def __init__(self, graph: str | Path, index: str | Path, weights: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort
        from safetensors.numpy import load_file

        spec = json.loads(Path(index).read_text())
        tensors = load_file(str(weights))
        names, values = [], []
        for init_name, key in spec["initializers"].items():
            if key not in tensors:
                raise WeightsError(f"the ONNX graph {Path(graph).name} needs tensor {key!r}, which {Path(weights).name} "
                                   "does not hold; re-export it with scripts/export_onnx.py")
            arr = tensors[key]
            if arr.dtype == np.float16:  # stored in fp16, computed in fp32 like the torch path
                arr = arr.astype(np.float32)
            names.append(init_name)
            values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr)))
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ORT's own warnings go to stderr otherwise
        options.add_external_initializers(names, values)
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail / InvalidGraph types
            raise WeightsError(f"ONNX Runtime cannot load {Path(graph).name} with {Path(weights).name}: {exc}; "
                               "re-export it with scripts/export_onnx.py") from exc
        self._values = values  # ORT does not copy external initializers: keep them alive
        self.size = int(spec["inputs"]["x"][2])
        self.weights_sha256 = spec.get("weights_sha256")

    def __call__(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": np.ascontiguousarray(x, np.float32), "z": np.ascontiguousarray(z, np.float32)})[0]


def load_registered(weights: str | Path, threads: int = 1) -> OnnxRenderer | None:
    """The registered graph for the registered v1 generator, or ``None`` when ORT is not installed
    or the graph was exported from other weights (then the torch path runs; logged).

    Raises:
        WeightsError: a registered graph or index file is missing or corrupt (checksums).
    """
    if not onnxruntime_available():
        log.info("onnxruntime is not installed: the renderer runs on torch")
        return None
    from ..models.registry import sha256_of, weight_path

    graph, index = weight_path(GRAPH_NAME), weight_path(INDEX_NAME)
    expected = json.loads(index.read_text()).get("weights_sha256")
    if expected != sha256_of(Path(weights)):
        log.info("the ONNX graph was exported from other generator weights: the renderer runs on torch")
        return None
    return OnnxRenderer(graph, index, weights, threads=threads)
