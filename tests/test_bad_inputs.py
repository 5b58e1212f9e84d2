"""The bad-input corpus (tests/badinputs.py) through the real CLI, as a user would run it.

Every case must end in a clear one-line error or a correct output: no traceback, no face left as
it was, no metadata in an output, no input changed, every skipped file accounted for.
Needs no external data (the faces are the bundled public-domain sample).
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badinputs import build_corpus
from identitydp._cli_types import one_line
from identitydp.io import read_image

# Metadata tags that must never reach an output (EXIF IFD0 / TIFF tags).
_IDENTIFYING_TAGS = {0x010E: "ImageDescription", 0x010F: "Make", 0x0110: "Model", 0x013B: "Artist",
                     0x8298: "Copyright", 0x8825: "GPS", 0x8773: "ICC profile", 0x02BC: "XMP", 0x9286: "UserComment"}
_METADATA_KEYS = {"exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment", "Author", "Location", "photoshop"}


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    corpus = root / "in"
    cases = build_corpus(corpus)
    before = _digests(corpus)
    out = root / "out"
    env = {**os.environ, "IDENTITYDP_LEDGER": str(root / "ledger.sqlite"), "OMP_NUM_THREADS": "2"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "identitydp.cli", "anonymize", str(corpus), "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"cases": cases, "corpus": corpus, "out": out, "proc": proc, "before": before,
            "after": _digests(corpus), "wall": wall, "peak_mb": peak_mb}


def _output_of(run, case) -> Path:
    return run["out"] / case.path.relative_to(run["corpus"])


def _stderr_lines(run) -> list[str]:
    # Progress bars redraw with \r; the messages are the lines that remain.
    return [seg for line in run["proc"].stderr.splitlines() for seg in line.split("\r") if seg.strip()]


@pytest.mark.slow
def test_corpus_no_traceback_and_inputs_untouched(corpus_run):
    proc = corpus_run["proc"]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])  # some inputs failed, the rest done
    assert corpus_run["after"] == corpus_run["before"], "an input was changed, added or removed"
    print(f"corpus: {len(corpus_run['cases'])} cases in {corpus_run['wall']:.1f} s, peak {corpus_run['peak_mb']:.0f} MB")
    assert corpus_run["peak_mb"] < 2048


@pytest.mark.slow
def test_corpus_errors_are_one_line_each_and_leave_no_output(corpus_run):
    lines = _stderr_lines(corpus_run)
    for case in corpus_run["cases"]:
        if case.expect != "error":
            continue
        mine = [ln for ln in lines if ln.startswith("failed: ") and one_line(case.path) in ln]
        assert len(mine) == 1, (case.name, mine)
        assert not _output_of(corpus_run, case).exists(), case.name


@pytest.mark.slow
def test_corpus_skipped_files_are_counted_by_reason(corpus_run):
    text = "\n".join(_stderr_lines(corpus_run))
    for case in corpus_run["cases"]:
        if case.expect != "skip":
            continue
        if case.path.name.startswith("."):
            assert "1 hidden file(s)" in text
        else:
            assert repr(str(case.path)) in text or str(case.path) in text, case.name
        assert not _output_of(corpus_run, case).exists()


def _first_video_frame(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


@pytest.mark.slow
def test_corpus_outputs_are_anonymized_and_clean(corpus_run):
    failures = []
    for case in corpus_run["cases"]:
        if case.expect != "output":
            continue
        dst = _output_of(corpus_run, case)
        if not dst.is_file():
            failures.append(f"{case.name}: no output")
            continue
        if case.video:
            out = _first_video_frame(dst)
        else:
            with Image.open(dst) as img:
                keys = _METADATA_KEYS & set(img.info)
                tags = [name for tag, name in _IDENTIFYING_TAGS.items() if tag in img.getexif()]
                if keys or tags:
                    failures.append(f"{case.name}: metadata left {sorted(keys)} {tags}")
            out = read_image(dst).pixels
        if case.reference is not None and out.shape != case.reference.shape:
            failures.append(f"{case.name}: output {out.shape} but input decodes to {case.reference.shape}")
            continue
        if case.face_box is not None:
            # Against what the input decodes to (a 1-bit input differs from the grey reference
            # everywhere; only an unchanged face matches its own decoding).
            before = case.reference if case.video else read_image(case.path).pixels
            x0, y0, x1, y1 = case.face_box
            diff = np.abs(out[y0:y1, x0:x1].astype(int) - before[y0:y1, x0:x1].astype(int)).mean()
            if diff < 12:
                failures.append(f"{case.name}: face region changed by only {diff:.1f} levels")
    assert not failures, "\n".join(failures)
