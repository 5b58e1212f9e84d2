"""An append-only on-disk cache of per-image measurements (detections, embeddings, attributes).

Layout: ``<root>/<namespace>/<chunk>.npz``. A namespace names the model *and* its version (e.g.
``mobileface-8c9f0040``), so new weights never read stale values. Each chunk holds the entries
flushed together; a crash loses at most the unflushed entries; chunks are written atomically
(temporary file, then rename). Entries are dicts of small NumPy arrays keyed by a string (the
image path relative to the data root plus, where the value depends on it, a digest of the face
geometry used).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np


def geometry_digest(*arrays: np.ndarray) -> str:
    """Short digest of face geometry (landmarks, boxes) rounded to 0.01 px."""
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.round(np.asarray(a, np.float64), 2).tobytes())
    return h.hexdigest()[:12]


class ArrayCache:
    """Cache of ``key -> {field: ndarray}`` for one namespace.

    Args:
        root: cache root folder (created on first flush).
        namespace: model + version, e.g. ``"dlib-572c9c6a"``; a folder under ``root``.
        enabled: when False nothing is read or written (every lookup misses).
    """

    def __init__(self, root: str | Path, namespace: str, enabled: bool = True) -> None:
        if not namespace or "/" in namespace or namespace.startswith("."):
            raise ValueError(f"bad cache namespace {namespace!r}")
        self.folder = Path(root) / namespace
        self.enabled = enabled
        self._data: dict[str, dict[str, np.ndarray]] | None = None
        self._pending: dict[str, dict[str, np.ndarray]] = {}

    def _load(self) -> dict[str, dict[str, np.ndarray]]:
        if self._data is None:
            self._data = {}
            if self.enabled and self.folder.is_dir():
                for chunk in sorted(self.folder.glob("*.npz")):
                    with np.load(chunk, allow_pickle=False) as z:
                        keys = [str(k) for k in z["__keys__"]]
                        fields = [f for f in z.files if f != "__keys__"]
                        for i, key in enumerate(keys):
                            self._data[key] = {f.split("/", 1)[1]: z[f] for f in fields if f.startswith(f"{i}/")}
        return self._data

    def __contains__(self, key: str) -> bool:
        return key in self._pending or key in self._load()

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        if key in self._pending:
            return self._pending[key]
        return self._load().get(key)

    def put(self, key: str, value: dict[str, np.ndarray]) -> None:
        self._pending[key] = {k: np.asarray(v) for k, v in value.items()}

    def flush(self) -> None:
        """Write the pending entries as one new chunk."""
        if not self._pending:
            return
        data = self._load()
        data.update(self._pending)
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            arrays: dict[str, np.ndarray] = {"__keys__": np.array(list(self._pending), dtype=str)}
            for i, value in enumerate(self._pending.values()):
                for f, a in value.items():
                    arrays[f"{i}/{f}"] = a
            name = f"{uuid.uuid4().hex}.npz"
            tmp = self.folder / f".{name}.tmp"
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, self.folder / name)
        self._pending = {}

    def __len__(self) -> int:
        return len(set(self._load()) | set(self._pending))
