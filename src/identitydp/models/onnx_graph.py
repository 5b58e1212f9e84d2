"""Networks on ONNX Runtime from weight-free graphs and our checksummed safetensors (no torch).

``scripts/export_onnx.py`` exports a network's computation graph with every weight declared as
external data that has no file behind it, plus an *index* JSON that says how each graph
initializer is made from the safetensors tensors: a plain copy (fp16 widened to fp32), or a
uint8 dequantisation (``q * scale + min``, as tfjs does), optionally transposed. At load the
tensors are built in NumPy and handed to ORT (``SessionOptions.add_external_initializers``), so
weights live in one place and a graph cannot carry stale ones.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from .._memory import release_free_memory
from ..errors import WeightsError

INDEX_FORMAT = "identitydp-onnx-index-v1"


def default_threads() -> int:
    """Threads for ORT: torch's setting when torch is already loaded (the CLI's --threads sets
    both), else OMP_NUM_THREADS, else every core."""
    import os
    import sys

    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, os.cpu_count() or 1)


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` imports (a default dependency; without it the torch path runs)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def build_initializer(tensors: dict[str, np.ndarray], recipe: str | dict) -> np.ndarray:
    """One graph initializer from the stored tensors, following its index recipe.

    Args:
        tensors: the safetensors file as NumPy arrays.
        recipe: a tensor name (copy), or ``{"key": name, "dequantise": bool, "transpose": [axes]}``.
            Floating tensors come back as float32, integer ones in their stored dtype.

    Raises:
        KeyError: a tensor the recipe names is not stored.
    """
    if isinstance(recipe, str):
        recipe = {"key": recipe}
    key = recipe["key"]
    if recipe.get("dequantise"):
        arr = tensors[f"{key}.q"].astype(np.float64) * tensors[f"{key}.scale"] + tensors[f"{key}.min"]
    else:
        arr = tensors[key]
    # Floats are widened to fp32 (fp16 storage); integer tensors (an int8 graph's weights, scales'
    # zero points) go to ORT as they are stored.
    if arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    if recipe.get("transpose"):
        arr = arr.transpose(recipe["transpose"])
    # Not np.ascontiguousarray: it turns a 0-d tensor (an int8 graph's scale) into shape (1,).
    return np.require(arr, requirements="C")


class OnnxGraph:
    """A network on ONNX Runtime: ``graph(**inputs)`` -> the first output, float32.

    Args:
        graph: the weight-free ONNX graph.
        index: its index JSON.
        weights: the safetensors file the index refers to (checksum-verified by the caller).
        threads: ORT intra-op threads (the CLI's ``--threads``).
        keep_initializers: keep the NumPy initializers referenced after the session is built
            (tests use it to check that ORT no longer reads them).
        defer: read only the index now; build the initializers and the ORT session (together
            0.1-0.3 s) on the first :meth:`build` or call, so that a caller can build them on a
            thread while the detector runs. The errors below are then raised by :meth:`build`.
        memory_arena: keep ORT's CPU memory arena (activation buffers reused from run to run).
            Off by default: the renderer's buffers are small and freeing them lowers the peak.
            On for a network whose activations are tens of MB (the detector on a 1280-px frame):
            without it every run maps and faults those pages in again, +0.1 s of system time
            per 1080p photo.

    Raises:
        WeightsError: the graph does not fit the weights (a missing tensor, another
            architecture) or ORT cannot build the session.
    """

    def __init__(self, graph: str | Path, index: str | Path, weights: str | Path, threads: int = 1,
                 keep_initializers: bool = False, defer: bool = False, memory_arena: bool = False) -> None:
        self.spec = json.loads(Path(index).read_text())
        if self.spec.get("format") != INDEX_FORMAT:
            raise WeightsError(f"{Path(index).name} is not an identitydp ONNX index (format {self.spec.get('format')!r})")
        self._graph_path, self._weights_path = Path(graph), Path(weights)
        self._threads = max(1, int(threads))
        self._keep_initializers = keep_initializers
        self._memory_arena = bool(memory_arena)
        self.initializers: list | None = None
        self._session = None
        self._lock = threading.Lock()
        if not defer:
            self.build()

    def _initializers(self) -> tuple[list[str], list]:
        import onnxruntime as ort
        from safetensors.numpy import load_file

        tensors = load_file(str(self._weights_path))
        names, values = [], []
        for init_name, recipe in self.spec["initializers"].items():
            try:
                arr = build_initializer(tensors, recipe)
            except KeyError as exc:
                raise WeightsError(f"the ONNX graph {self._graph_path.name} needs tensor {exc}, which "
                                   f"{self._weights_path.name} does not hold; re-export it with scripts/export_onnx.py") from exc
            names.append(init_name)
            values.append(ort.OrtValue.ortvalue_from_numpy(arr))
        return names, values

    def build(self):
        """The ORT session, built on the first call (thread-safe; a second caller waits for it).

        Raises:
            WeightsError: see the class; raised again on every later call.
        """
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                names, values = self._initializers()
                options = ort.SessionOptions()
                options.intra_op_num_threads = self._threads
                options.inter_op_num_threads = 1
                # Idle pool threads sleep instead of spinning: the spin burns the core that the
                # detector (OpenCV, or its video worker thread) and the other stages need.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                options.log_severity_level = 3  # ORT's own warnings would go to stderr
                # Without the arena, activations are freed after each run: -0.2 GB peak on a 5-face photo.
                options.enable_cpu_mem_arena = self._memory_arena
                # The options do not own these: ``values`` must live until the session is built.
                options.add_external_initializers(names, values)
                try:
                    self._session = ort.InferenceSession(str(self._graph_path), options, providers=["CPUExecutionProvider"])
                except Exception as exc:  # ORT raises its own Fail / InvalidGraph / RuntimeException types
                    raise WeightsError(f"ONNX Runtime cannot load {self._graph_path.name} with {self._weights_path.name}: "
                                       f"{exc}; re-export it with scripts/export_onnx.py") from exc
                # ORT may use external initializers in place, but the CPU provider copies every
                # one of ours while it builds the session (Conv+BN fusion, weight prepacking):
                # holding them would cost ~30 MB per network for nothing. A test poisons them
                # after the build and checks that the outputs do not move, so an ORT that starts
                # reading them fails the tests instead of reading freed memory.
                if self._keep_initializers:
                    self.initializers = values
                del names, values, options
                release_free_memory()  # the build's temporaries, freed in this thread's arena
            return self._session

    @property
    def session(self):
        return self._session if self._session is not None else self.build()

    @property
    def input_names(self) -> list[str]:
        """The graph's input names, in order (from the index; no session needed)."""
        return list(self.spec["inputs"])

    def __call__(self, **inputs: np.ndarray) -> np.ndarray:
        return self.run(None, **inputs)[0]

    def run(self, output_names: list[str] | None, **inputs: np.ndarray) -> list[np.ndarray]:
        """The named outputs (``None``: all, in the graph's order) for float32 ``inputs``."""
        feed = {k: np.ascontiguousarray(v, np.float32) for k, v in inputs.items()}
        return self.session.run(output_names, feed)


def load_registered(graph_name: str, index_name: str, weights: str | Path, threads: int = 1,
                    defer: bool = False, *, runs: str | Path | None = None,
                    tied_by: str = "weights_sha256") -> OnnxGraph | None:
    """A registered graph for ``weights``, or ``None`` when ORT is not installed, the graph is not
    registered, or its index's ``tied_by`` checksum is not that of ``weights`` (the caller then
    runs another path). ``runs``: the safetensors the graph is fed (default ``weights``; the int8
    renderer runs its own file, tied to the fp32 weights by ``quantized_from_sha256``).

    Raises:
        WeightsError: a registered graph or index file is missing or corrupt (checksums).
    """
    if not onnxruntime_available():
        return None
    from .registry import registry, weight_path, weights_sha256

    if graph_name not in registry() or index_name not in registry():
        return None
    graph, index = weight_path(graph_name), weight_path(index_name)
    if json.loads(index.read_text()).get(tied_by) != weights_sha256(Path(weights)):
        return None
    return OnnxGraph(graph, index, weights if runs is None else runs, threads=threads, defer=defer)
