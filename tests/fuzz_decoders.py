"""Fuzz target (atheris) for identitydp's image decoding: ``identitydp.io.read_image``.

Run it for as long as you like (libFuzzer options after the script name):

    .venv/bin/python tests/fuzz_decoders.py -atheris_runs=200000 fuzz-corpus/

``fuzz-corpus/`` (created if missing) keeps the inputs that found new code paths; it is seeded with
small valid PNG, JPEG, WebP, BMP and TIFF files. The first byte of an input picks the file suffix,
the rest is the file. The property: ``read_image`` returns (H, W, 3) uint8 pixels or raises
``ImageReadError``; any other exception (or a crash) is a finding, saved by libFuzzer as
``crash-*``. ``tests/test_properties.py`` runs a short session of it in CI.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import numpy as np
    from PIL import Image

    from identitydp.errors import ImageReadError
    from identitydp.io import read_image

SUFFIXES = [".png", ".jpg", ".webp", ".bmp", ".tiff"]
_FD, _PATH = None, None


def seed_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        return
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    for i, fmt in enumerate(("PNG", "JPEG", "WEBP", "BMP", "TIFF")):
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        (folder / f"seed-{fmt.lower()}").write_bytes(bytes([i]) + buf.getvalue())


def test_one_input(data: bytes) -> None:
    if not data:
        return
    path = Path(f"{_PATH}{SUFFIXES[data[0] % len(SUFFIXES)]}")
    path.write_bytes(data[1:])
    try:
        loaded = read_image(path, max_pixels=4_000_000)  # keep each run fast; the limit path is fuzzed too
    except ImageReadError:
        return
    finally:
        path.unlink(missing_ok=True)
    pixels = loaded.pixels
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise AssertionError(f"read_image returned {pixels.shape} {pixels.dtype}")
    if loaded.alpha is not None and loaded.alpha.shape != pixels.shape[:2]:
        raise AssertionError(f"alpha {loaded.alpha.shape} for pixels {pixels.shape}")


def main() -> None:
    global _PATH
    workdir = tempfile.mkdtemp(prefix="identitydp-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    _PATH = os.path.join(workdir, "input")
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    for folder in corpus:
        seed_corpus(Path(folder))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
