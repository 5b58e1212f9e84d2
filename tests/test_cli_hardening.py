"""Hostile and mistaken command lines: one-line messages, README exit codes, inputs never written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from identitydp.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "group.jpg"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def photo(tmp_path, lfw_images) -> Path:
    """A real LFW photo, copied so that any write to it would be seen."""
    dst = tmp_path / "in" / "face.jpg"
    dst.parent.mkdir()
    shutil.copy(lfw_images[0], dst)
    return dst


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------ --report


def test_report_never_overwrites_the_input(photo, capsys):
    before = _digest(photo)
    assert cli_main(["anonymize", str(photo), "--method", "blur", "--report", str(photo)]) == 2
    assert "input" in _one_line_error(capsys)
    assert _digest(photo) == before
    assert not photo.with_name("face.anonymized.jpg").exists()  # refused before any work


def test_report_never_overwrites_an_input_through_links(photo, capsys):
    before = _digest(photo)
    sym = photo.with_name("sym.json")
    sym.symlink_to(photo)
    hard = photo.parent.parent / "hard.json"
    os.link(photo, hard)
    for target in (sym, hard):
        assert cli_main(["anonymize", str(photo), "--method", "blur", "--report", str(target)]) == 2
        _one_line_error(capsys)
    assert _digest(photo) == before


def test_report_never_overwrites_an_input_of_a_folder(tmp_path, lfw_images, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, p in enumerate(lfw_images[:2]):
        shutil.copy(p, folder / "sub" / f"{i}.jpg")
    victim = folder / "sub" / "1.jpg"
    before = _digest(victim)
    assert cli_main(["anonymize", str(folder), "-o", str(tmp_path / "out"), "--method", "blur", "--report", str(victim)]) == 2
    _one_line_error(capsys)
    assert _digest(victim) == before and not (tmp_path / "out").exists()


def test_report_never_overwrites_an_output_or_the_ledger(photo, tmp_path, capsys):
    out = tmp_path / "o.jpg"
    assert cli_main(["anonymize", str(photo), "-o", str(out), "--method", "blur", "--report", str(out)]) == 2
    assert "output" in _one_line_error(capsys)
    ledger = tmp_path / "o.ledger.json"
    args = ["anonymize", str(photo), "-o", str(out), "--method", "dp-pix", "--seed", "1", "--report", str(ledger)]
    assert cli_main(args) == 2
    assert "output" in _one_line_error(capsys)
    assert not out.exists() and not ledger.exists()


def test_unwritable_report_is_one_line(photo, tmp_path, capsys, monkeypatch):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    out = tmp_path / "o.jpg"
    for bad in [not_a_folder / "r.json", tmp_path, tmp_path / ("r" * 300 + ".json")]:  # parent is a file, a folder, name too long
        assert cli_main(["anonymize", str(photo), "-o", str(out), "--method", "blur", "--quiet", "--report", str(bad)]) == 2
        _one_line_error(capsys)
        assert not out.exists()
    assert not_a_folder.read_text() == "x"

    # A write that fails only at the end (disk full, folder removed): one line, exit 3.
    import identitydp._cli_anonymize as cli_anonymize

    def fail(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli_anonymize, "write_json_atomic", fail)
    assert cli_main(["anonymize", str(photo), "-o", str(out), "--method", "blur", "--quiet", "--report", str(tmp_path / "r.json")]) == 3
    assert "No space left" in _one_line_error(capsys)


def test_good_report_is_written(photo, tmp_path):
    report = tmp_path / "deep" / "r.json"  # missing folders are created
    assert cli_main(["anonymize", str(photo), "-o", str(tmp_path / "o.jpg"), "--method", "blur", "--quiet", "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert len(data["images"]) == 1 and data["failures"] == [] and data["images"][0]["faces"]


def test_detect_json_never_overwrites_the_input(photo, capsys):
    before = _digest(photo)
    assert cli_main(["detect", str(photo), "-o", str(photo)]) == 2
    _one_line_error(capsys)
    assert _digest(photo) == before


def test_report_never_overwrites_a_video_input(photo, tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"refused before it is even decoded")
    for inputs in ([clip], [clip, photo]):
        assert cli_main(["anonymize", *map(str, inputs), "--method", "blur", "--report", str(clip)]) == 2
        _one_line_error(capsys)
    assert clip.read_bytes() == b"refused before it is even decoded"
