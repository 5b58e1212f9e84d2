"""--exempt: consenting people's faces are kept, everyone else is anonymized (real LFW faces)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import read_ledger
from identitydp.cli import main as cli_main
from identitydp.io import read_image

REPO = Path(__file__).resolve().parent.parent


def _people(lfw_dir: Path):
    people = sorted(p for p in (lfw_dir / "lfw-deepfunneled").iterdir() if p.is_dir())
    return people


def _scene(faces: list[Path], path: Path) -> Path:
    canvas = Image.new("RGB", (340 * len(faces) + 40, 480), (110, 120, 130))
    for i, photo in enumerate(faces):
        canvas.paste(Image.open(photo).crop((40, 30, 210, 220)).resize((255, 285)), (40 + 340 * i, 90))
    canvas.save(path, quality=95)
    return path


@pytest.fixture()
def group(tmp_path, lfw_dir):
    """Scene: photo 2 of Colin Powell between three other people; references folder with photo 1."""
    people = _people(lfw_dir)
    target = next(p for p in people if p.name == "Colin_Powell")
    others = [p for p in people if len(list(p.glob("*.jpg"))) == 1][200:203]
    scene = _scene([next(others[0].glob("*.jpg")), sorted(target.glob("*.jpg"))[1], *[next(o.glob("*.jpg")) for o in others[1:]]],
                   tmp_path / "scene.jpg")
    refs = tmp_path / "consent"
    refs.mkdir()
    shutil.copy(sorted(target.glob("*.jpg"))[0], refs / "Colin_Powell.jpg")
    return scene, refs, others


def _faces_by_x(report: Path) -> list[dict]:
    faces = json.loads(report.read_text())["images"][0]["faces"]
    return sorted(faces, key=lambda f: f["box"][0])


def test_reference_person_is_kept_everyone_else_anonymized(tmp_path, group, private_ledger):
    scene, refs, _ = group
    out, report = tmp_path / "out.jpg", tmp_path / "r.json"
    rc = cli_main(["anonymize", str(scene), "-o", str(out), "--method", "dp-pix", "--exempt", str(refs), "--report", str(report), "--quiet"])
    assert rc == 0
    faces = _faces_by_x(report)
    kept = [f for f in faces if f["status"] == "exempt"]
    assert len(faces) >= 4 and len(kept) == 1 and all(f["status"] == "anonymized" for f in faces if f not in kept)
    assert 380 <= (kept[0]["box"][0] + kept[0]["box"][2]) / 2 <= 720  # the second pasted photo: Colin Powell
    assert kept[0]["exempt"]["person"] == "Colin_Powell" and kept[0]["exempt"]["distance"] < 0.06
    # The kept face is bit-identical in the output region; the others changed. Kept faces cost no ε.
    src, dst = read_image(scene).pixels.astype(int), read_image(out).pixels.astype(int)
    for f in faces:
        x0, y0, x1, y1 = (int(v) for v in f["box"])
        diff = np.abs(src[y0:y1, x0:x1] - dst[y0:y1, x0:x1]).mean()
        assert (diff < 3) if f["status"] == "exempt" else (diff > 10), (f["status"], diff)
    assert read_ledger(private_ledger)["releases"]["released"] == len(faces) - 1


def test_an_impostor_reference_keeps_nobody(tmp_path, group, lfw_dir):
    scene, _, _ = group
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    someone = next(p for p in _people(lfw_dir) if p.name == "Tony_Blair")
    shutil.copy(sorted(someone.glob("*.jpg"))[2], impostor / "Tony_Blair.jpg")
    report = tmp_path / "r.json"
    assert cli_main(["anonymize", str(scene), "-o", str(tmp_path / "o.jpg"), "--method", "blur", "--exempt", str(impostor),
                     "--report", str(report), "--quiet"]) == 0
    faces = _faces_by_x(report)
    assert len(faces) >= 4 and all(f["status"] == "anonymized" for f in faces)


def test_bad_reference_folders_are_one_line_errors(tmp_path, group, capsys):
    scene, _, _ = group
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(scene, two / "group_photo.jpg")  # four faces: not a reference
    assert cli_main(["anonymize", str(scene), "-o", str(tmp_path / "o.jpg"), "--method", "blur", "--exempt", str(two)]) == 3
    err = capsys.readouterr().err.strip()
    assert re.search(r"shows [45] faces", err) and "\n" not in err and not (tmp_path / "o.jpg").exists()
    assert cli_main(["anonymize", str(scene), "-o", str(tmp_path / "o.jpg"), "--method", "blur", "--exempt", str(tmp_path / "none")]) == 3
    assert "not a folder" in capsys.readouterr().err


def test_calibration_and_measured_figures_are_committed():
    from identitydp.exempt import THRESHOLD_FILE

    cal = json.loads(THRESHOLD_FILE.read_text())
    assert cal["far_target"] <= 1e-3 and cal["far_on_calibration"] <= cal["far_target"] and cal["impostor_pairs"] > 1e6
    measured = json.loads((REPO / "docs" / "results" / "exemption.json").read_text())
    assert measured["impostor_faces"] >= 1000 and measured["threshold"]["threshold"] == cal["threshold"]
