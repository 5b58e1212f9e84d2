"""TF-graph executor, judge wrappers and the embed stage, on real LFW faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from identitydp.detect import CenterFaceDetector, Detections
from identitydp.embed import Embeddings, IdentityEmbedder, cosine_distance
from identitydp.errors import WeightsError
from identitydp.models import judges
from identitydp.models.tfgraph import TFGraph

PEOPLE = ["Colin_Powell_0001", "Colin_Powell_0002", "Serena_Williams_0001", "Alejandro_Gonzalez_Inarritu_0001"]


@pytest.fixture(scope="module")
def faces(lfw_dir):
    """name -> (image, Detections of the central face)."""
    detector = CenterFaceDetector()
    out = {}
    for name in PEOPLE:
        person = name.rsplit("_", 1)[0]
        image = np.asarray(Image.open(lfw_dir / "lfw-deepfunneled" / person / f"{name}.jpg").convert("RGB"))
        det = detector.detect(image)
        centre = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
        k = int(np.argmin(((centre - np.array(image.shape[1::-1]) / 2) ** 2).sum(1)))
        out[name] = (image, det.subset([k]))
    return out


def test_folding_is_exact():
    torch.manual_seed(0)
    x = torch.rand(2, 224, 224, 3) * 255
    outputs = judges.FaceRes.outputs
    folded = TFGraph.from_registry("faceres", outputs)
    plain = TFGraph.from_registry("faceres", outputs, fold=False)
    assert len(folded._plan) < len(plain._plan)
    with torch.no_grad():
        for a, b in zip(folded(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_unsupported_op_is_loud():
    topology = {"modelTopology": {"node": [
        {"name": "x", "op": "Placeholder"},
        {"name": "y", "op": "FancyOp", "input": ["x"]},
    ]}}
    with pytest.raises(WeightsError, match="FancyOp"):
        TFGraph(topology, {}, ["y"])


def test_mobileface_separates_people(faces):
    net = judges.MobileFace.load()
    emb = {n: net.embed(im, det.landmarks)[0] for n, (im, det) in faces.items()}
    same = emb["Colin_Powell_0001"] @ emb["Colin_Powell_0002"]
    diff = emb["Colin_Powell_0001"] @ emb["Serena_Williams_0001"]
    assert emb["Colin_Powell_0001"].shape == (256,)
    assert same > 0.3 > diff, (same, diff)


def test_mobileface_is_differentiable(faces):
    net = judges.MobileFace.load()
    image, det = faces["Serena_Williams_0001"]
    x = judges.to_nchw(net.align(image, det.landmarks)).requires_grad_(True)
    net(x).norm().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_faceres_age_gender(faces):
    net = judges.FaceRes.load()
    out = {n: net.predict(im, det.landmarks) for n, (im, det) in faces.items()}
    for n, o in out.items():
        assert o.features.shape == (1, 1024)
        assert 15 < o.age[0] < 80, (n, o.age)
    assert out["Colin_Powell_0001"].male[0] > 0.5
    assert out["Serena_Williams_0001"].male[0] < 0.5
    # Colin Powell (b. 1937, photographed ~2002) reads older than Serena Williams (b. 1981).
    assert out["Colin_Powell_0001"].age[0] > out["Serena_Williams_0001"].age[0] + 10


def test_blazeface_finds_lfw_faces(faces):
    net = judges.BlazeFace.load()
    for name, (image, det) in faces.items():
        found = net.detect(image)
        assert len(found) >= 1, name
        box = found.boxes[0]
        centre = (det.boxes[0, :2] + det.boxes[0, 2:]) / 2
        assert box[0] < centre[0] < box[2] and box[1] < centre[1] < box[3], name
        # Keypoint 0 is the subject's right eye (image left), near CenterFace's left-eye point.
        iod = np.linalg.norm(det.landmarks[0, 1] - det.landmarks[0, 0])
        assert np.linalg.norm(found.keypoints[0, 0] - det.landmarks[0, 0]) < 0.25 * iod


def test_facemesh_lands_on_the_face(faces):
    net = judges.FaceMesh.load()
    for name, (image, det) in faces.items():
        mesh = net.predict(image, det.boxes, det.landmarks)
        assert mesh.points.shape == (1, 468, 3) and mesh.scores[0] > 0.9, name
        x1, y1, x2, y2 = det.boxes[0]
        pts = mesh.points[0, :, :2]
        inside = (pts[:, 0] >= x1) & (pts[:, 0] <= x2) & (pts[:, 1] >= y1) & (pts[:, 1] <= y2)
        assert inside.mean() > 0.9, (name, inside.mean())
        # Nose tip (mesh point 1) near CenterFace's nose.
        iod = np.linalg.norm(det.landmarks[0, 1] - det.landmarks[0, 0])
        assert np.linalg.norm(pts[1] - det.landmarks[0, 2]) < 0.2 * iod, name


def test_emotion_smile(faces):
    net = judges.Emotion.load()
    image, det = faces["Alejandro_Gonzalez_Inarritu_0001"]  # a broad smile
    probs = net.predict(image, det.landmarks)
    assert probs.shape == (1, 7)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert judges.EMOTIONS[int(probs[0].argmax())] == "happy"


@pytest.mark.parametrize("model", ["dlib", "mobileface", "faceres"])
def test_identity_embedder(faces, model):
    embedder = IdentityEmbedder(model)
    image, det = faces["Colin_Powell_0001"]
    emb = embedder.embed(image, det)
    assert isinstance(emb, Embeddings) and emb.model == model and emb.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, rtol=1e-5)
    other = embedder.embed(*faces["Colin_Powell_0002"])
    stranger = embedder.embed(*faces["Serena_Williams_0001"])
    assert cosine_distance(emb.vectors[0], other.vectors[0]) < cosine_distance(emb.vectors[0], stranger.vectors[0])
    assert len(embedder.embed(image, Detections())) == 0


def test_identity_embedder_centring(faces):
    image, det = faces["Colin_Powell_0001"]
    raw = IdentityEmbedder("dlib").embed(image, det).vectors[0]
    centred = IdentityEmbedder("dlib", mean=raw * 0.5).embed(image, det).vectors[0]
    np.testing.assert_allclose(centred, raw, atol=1e-5)  # raw - raw/2 points the same way
    with pytest.raises(ValueError, match="mean must have shape"):
        IdentityEmbedder("dlib", mean=np.zeros(3))
    with pytest.raises(ValueError, match="unknown recognizer"):
        IdentityEmbedder("arcface")


def test_identity_embedder_flip(faces):
    image, det = faces["Colin_Powell_0001"]
    single = IdentityEmbedder("mobileface")
    flipped = IdentityEmbedder("mobileface", flip=True)
    assert single.config_id.endswith(":single") and flipped.config_id.endswith(":flip")
    a, b = single.embed(image, det).vectors[0], flipped.embed(image, det).vectors[0]
    np.testing.assert_allclose(np.linalg.norm(b), 1.0, rtol=1e-5)
    # The mirror image is the same face: the average moves the vector only a little.
    assert 0.0 < cosine_distance(a, b) < 0.2


def test_weighted_similarity_reduces_to_umeyama():
    from identitydp.align import estimate_similarity
    from identitydp.models.dlib_resnet import weighted_similarity

    rng = np.random.default_rng(0)
    src, dst = rng.normal(size=(5, 2)) * 30 + 100, rng.normal(size=(5, 2)) * 20 + 70
    np.testing.assert_allclose(weighted_similarity(src, dst, np.ones(5)), estimate_similarity(src, dst), atol=1e-9)
    # A point with (almost) no weight does not move the fit.
    moved = dst.copy()
    moved[2] += 50
    w = np.array([1, 1, 1e-9, 1, 1])
    np.testing.assert_allclose(weighted_similarity(src, moved, w), weighted_similarity(src, dst, w), atol=1e-5)
