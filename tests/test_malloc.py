"""The front ends' malloc setting lowers the peak memory of a real run (photos through the CLI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from identitydp._malloc import return_freed_memory_to_os

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

PEAK = """
import resource, sys
from identitydp.cli import main
rc = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(rc)
"""


def test_user_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1000000")
    assert return_freed_memory_to_os() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("IDENTITYDP_MALLOC", "default")
    assert return_freed_memory_to_os() is False


@pytest.mark.slow
def test_cli_peak_memory_lower_with_fixed_mmap_threshold(tmp_path, lfw_images):
    # Four large photos with real faces through IdentityDP (the default): freed image-sized
    # buffers and network activations are what glibc keeps resident.
    folder = tmp_path / "in"
    folder.mkdir()
    for i, path in enumerate(lfw_images[:4]):
        face = Image.open(path).resize((500, 500))
        canvas = Image.new("RGB", (1920, 1080), (90 + 20 * i, 120, 140))
        canvas.paste(face, (300 + 200 * i, 200))
        canvas.save(folder / f"p{i}.jpg", quality=90)

    def peak_kb(env_extra: dict) -> int:
        env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
        out = tmp_path / f"out{len(env_extra)}"
        proc = subprocess.run([sys.executable, "-c", PEAK, "--threads", "1", "anonymize", str(folder), "-o", str(out),
                               "--quiet"], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert len(list(Path(out).glob("*.jpg"))) == 4
        return int(proc.stdout.split()[-1])

    tuned = peak_kb({})
    untuned = peak_kb({"IDENTITYDP_MALLOC": "default"})  # glibc's dynamic threshold, as before
    print(f"\npeak RSS: {tuned / 1024:.0f} MB with the fixed mmap threshold, {untuned / 1024:.0f} MB without")
    assert tuned < 0.92 * untuned
