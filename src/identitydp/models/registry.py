"""Registry of every weight file identitydp loads.

Each entry names a file, its SHA-256, where it came from (registry package and version, upstream
origin) and its license. Loading verifies the checksum; a missing or corrupt file raises
:class:`WeightsError` that says how to rebuild it. Weights are safetensors (or, for graph
topologies, JSON), never pickles.

Files are looked up in ``$IDENTITYDP_WEIGHTS`` (if set) and then in the package's ``weights/``
folder. ``scripts/convert_weights.py`` rebuilds the converted files from the registry packages.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import WeightsError

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
REBUILD_HINT = "rebuild it with `python scripts/convert_weights.py` (see MODEL_CARD.md)"


@dataclass(frozen=True)
class WeightFile:
    """One file in the registry.

    Attributes:
        name: registry key, e.g. ``"dlib_resnet"``.
        filename: file name inside the weights folder.
        sha256: hex digest of the file's bytes.
        source: registry package it was converted from, with version.
        origin: upstream origin of the weights (who trained them).
        license: license of the weights.
        rebuild: how to regenerate the file.
    """

    name: str
    filename: str
    sha256: str
    source: str
    origin: str
    license: str
    rebuild: str = REBUILD_HINT


# Checksums are filled in by scripts/convert_weights.py --write-registry; the JSON beside the
# weights is the single source of truth so that conversion and registry never drift apart.
_REGISTRY_JSON = WEIGHTS_DIR / "registry.json"


@lru_cache(maxsize=1)
def registry() -> dict[str, WeightFile]:
    """Return all registered weight files, keyed by name."""
    if not _REGISTRY_JSON.is_file():
        raise WeightsError(f"weights registry {_REGISTRY_JSON} is missing; {REBUILD_HINT}")
    entries = json.loads(_REGISTRY_JSON.read_text())
    return {e["name"]: WeightFile(**e) for e in entries}


def _search_dirs() -> list[Path]:
    dirs = []
    env = os.environ.get("IDENTITYDP_WEIGHTS")
    if env:
        dirs.append(Path(env))
    dirs.append(WEIGHTS_DIR)
    return dirs


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(path: Path) -> str:
    """:func:`sha256_of` for weight files, computed once per process for a file of the same path,
    size and modification time (a weight file is checked by its loader and again where a graph's
    index is tied to it: ~15 MB hashed twice at every start otherwise). Not for user files."""
    st = Path(path).stat()
    return _weights_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _weights_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


@lru_cache(maxsize=None)
def weight_path(name: str) -> Path:
    """Locate a registered weight file and verify its checksum.

    Raises:
        WeightsError: unknown name, file missing, or checksum mismatch.
    """
    entries = registry()
    if name not in entries:
        raise WeightsError(f"unknown weights {name!r}; known: {', '.join(sorted(entries))}")
    entry = entries[name]
    for folder in _search_dirs():
        path = folder / entry.filename
        if path.is_file():
            actual = weights_sha256(path)
            if actual != entry.sha256:
                raise WeightsError(
                    f"weights {name!r} at {path} are corrupt or from another version: "
                    f"sha256 {actual} != expected {entry.sha256}; {entry.rebuild}"
                )
            return path
    searched = ", ".join(str(d) for d in _search_dirs())
    raise WeightsError(f"weights {name!r} ({entry.filename}) not found in {searched}; {entry.rebuild}")


def register_entries(entries: list[dict]) -> None:
    """Write registry entries (for the scripts that make weight files): an entry replaces the one
    of the same name in place, new names go at the end. Each entry needs every
    :class:`WeightFile` field."""
    fields = set(WeightFile.__dataclass_fields__)
    new = {}
    for entry in entries:
        if set(entry) - fields or {f for f in fields if f != "rebuild"} - set(entry):
            raise ValueError(f"registry entry {entry.get('name')!r} must have the fields {sorted(fields)}")
        new[entry["name"]] = {f: entry[f] for f in WeightFile.__dataclass_fields__ if f in entry}
    current = json.loads(_REGISTRY_JSON.read_text())
    merged = [new.pop(e["name"], e) for e in current] + list(new.values())
    _REGISTRY_JSON.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
    registry.cache_clear()
    weight_path.cache_clear()


def load_tensors(name: str, device: str = "cpu") -> dict:
    """Load a registered safetensors file as a dict of tensors (checksum verified)."""
    from safetensors.torch import load_file

    return load_file(str(weight_path(name)), device=device)


def load_json(name: str) -> dict:
    """Load a registered JSON file (e.g. a graph topology), checksum verified."""
    return json.loads(weight_path(name).read_text())
