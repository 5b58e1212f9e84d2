"""The v1 renderer on ONNX Runtime equals the torch renderer on a real face (same weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from identitydp.detect import CenterFaceDetector
from identitydp.errors import WeightsError
from identitydp.io import read_image

pytest.importorskip("onnxruntime")

from identitydp.generate.anonymizer import WEIGHTS_NAME  # noqa: E402 - the ONNX path is the v1 renderer's


@pytest.fixture(scope="module")
def face_and_anonymizers(bundled_faces):
    from identitydp.generate.anonymizer import IdentityDPAnonymizer

    image = read_image(bundled_faces[0]).pixels
    faces = CenterFaceDetector().detect(image)
    assert len(faces) >= 1
    fast = IdentityDPAnonymizer(epsilon=1.0, seed=5, backend="onnxruntime", precision="fp32", weights=WEIGHTS_NAME)
    assert fast.model is None and fast.dlib is None  # nothing of torch loaded for it
    slow = IdentityDPAnonymizer(epsilon=1.0, seed=5, backend="torch", weights=WEIGHTS_NAME)
    return image, faces, fast, slow


def test_onnx_renders_what_torch_renders(face_and_anonymizers):
    image, faces, fast, slow = face_and_anonymizers
    assert fast.describe()["backend"] == "onnxruntime" and slow.describe()["backend"] == "torch"
    from identitydp.align import align_batch

    crops = np.stack([a.crop for a in align_batch(image, faces.landmarks, fast.size, fast.margin)])
    identities = np.random.default_rng(0).normal(size=(len(crops), 128))
    identities /= np.linalg.norm(identities, axis=1, keepdims=True)
    a, b = fast.render(crops, identities), slow.render(crops, identities)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float rounding at .5 only


def test_int8_renderer_stays_close_to_fp32_on_a_real_face(face_and_anonymizers):
    """v1's default on CPU is the int8 renderer quantized from its weights; on a real face
    its renderings stay within a few levels of fp32's (the evaluation compares the figures)."""
    from identitydp.align import align_batch
    from identitydp.generate.anonymizer import IdentityDPAnonymizer

    image, faces, fast, _ = face_and_anonymizers
    int8 = IdentityDPAnonymizer(epsilon=1.0, seed=5, weights=WEIGHTS_NAME)
    assert int8.describe()["precision"] == "int8" and fast.describe()["precision"] == "fp32"
    crops = np.stack([a.crop for a in align_batch(image, faces.landmarks, fast.size, fast.margin)])
    identities = np.random.default_rng(0).normal(size=(len(crops), 128))
    identities /= np.linalg.norm(identities, axis=1, keepdims=True)
    a, b = fast.render(crops, identities).astype(int), int8.render(crops, identities).astype(int)
    diff = np.abs(a - b)
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 16, (diff.mean(), np.percentile(diff, 99))
    assert not np.array_equal(a, b)  # it really is another network


def test_int8_renderer_of_other_weights_is_not_used(tmp_path):
    """The int8 graph is tied to the weights it was quantized from: other weights run fp32 under
    'auto' and are a loud error under 'int8'."""
    import shutil

    from identitydp.generate.anonymizer import IdentityDPAnonymizer
    from identitydp.models.registry import weight_path
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    src = weight_path("identitydp_generator")
    with safe_open(str(src), "np") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    first = sorted(tensors)[0]
    tensors[first] = (tensors[first] * 0.5).astype(tensors[first].dtype)  # other weights, same architecture
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata=meta)
    auto = IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=other, backend="torch")
    assert auto.describe()["precision"] == "fp32"
    with pytest.raises(WeightsError, match="int8"):
        IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=other, precision="int8")
    with pytest.raises(ValueError, match="precision"):
        IdentityDPAnonymizer(epsilon=1.0, seed=0, precision="fp8", weights=WEIGHTS_NAME)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_onnx_whole_pipeline_matches(face_and_anonymizers):
    image, faces, fast, slow = face_and_anonymizers
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    out_a = fast.anonymize_frame(image, faces, rng_a).image
    out_b = slow.anonymize_frame(image, faces, rng_b).image
    assert np.abs(out_a.astype(int) - out_b.astype(int)).max() <= 2


def test_dlib_on_onnx_matches_torch(bundled_faces):
    from identitydp.models.dlib_chip import dlib_chip
    from identitydp.models.dlib_onnx import DlibOnnxEncoder
    from identitydp.models.dlib_resnet import DlibEncoder, chips_to_tensor
    import torch

    chips = []
    for path in bundled_faces:
        image = read_image(path).pixels
        chips += [dlib_chip(image, lm) for lm in CenterFaceDetector().detect(image).landmarks]
    fast = DlibOnnxEncoder.load(threads=1)(chips)
    with torch.inference_mode():
        slow = DlibEncoder.load()(chips_to_tensor(chips)).numpy()
    assert fast.shape == slow.shape == (len(chips), 128)
    assert np.abs(fast - slow).max() < 1e-4


@pytest.mark.parametrize("renderer", ["v2", "v1"])
def test_photo_path_never_imports_torch(tmp_path, renderer):
    """The CLI's IdentityDP path runs on ONNX Runtime with either renderer (v2: the default): a
    fresh process anonymizes the bundled photo without loading torch or dlib (start-up time and
    memory; the 68 landmarks are our NumPy port)."""
    import subprocess
    import sys

    code = ("import sys; from identitydp.cli import main; "
            f"rc = main(['--threads', '1', 'anonymize', 'samples/group.jpg', '-o', {str(tmp_path / 'out.jpg')!r}, '--seed', '3', "
            f"'--renderer', {renderer!r}]); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', 'DLIB' if 'dlib' in sys.modules else 'NO-DLIB', rc)")
    env = {**__import__("os").environ, "IDENTITYDP_LEDGER": str(tmp_path / "ledger.sqlite")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["NO-TORCH", "NO-DLIB", "0"], out.stdout + out.stderr[-2000:]
    assert (tmp_path / "out.jpg").is_file()


def test_graph_that_does_not_fit_the_weights_is_a_loud_error(tmp_path):
    from identitydp.generate.onnx_backend import GRAPH_NAME, INDEX_NAME
    from identitydp.models.onnx_graph import OnnxGraph
    from identitydp.models.registry import weight_path

    spec = json.loads(weight_path(INDEX_NAME).read_text())
    first = next(iter(spec["initializers"]))
    spec["initializers"][first] = "no.such.tensor"
    bad = tmp_path / "index.json"
    bad.write_text(json.dumps(spec))
    with pytest.raises(WeightsError, match="re-export"):
        OnnxGraph(weight_path(GRAPH_NAME), bad, weight_path("identitydp_generator"))
    # Deferred (built on a loading thread): the same error from build(), on every call.
    deferred = OnnxGraph(weight_path(GRAPH_NAME), bad, weight_path("identitydp_generator"), defer=True)
    for _ in range(2):
        with pytest.raises(WeightsError, match="re-export"):
            deferred.build()


@pytest.mark.parametrize("graph_name, index_name, weights_name, shapes", [
    ("identitydp_generator_onnx", "identitydp_generator_onnx_index", "identitydp_generator", {"x": (2, 3, 128, 128), "z": (2, 128)}),
    ("dlib_resnet_onnx", "dlib_resnet_onnx_index", "dlib_resnet", {"x": (2, 3, 150, 150)}),
    ("identitydp_generator_int8_onnx", "identitydp_generator_int8_onnx_index", "identitydp_generator_int8",
     {"x": (2, 3, 128, 128), "z": (2, 128)}),
])
def test_sessions_do_not_read_our_initializers_after_building(graph_name, index_name, weights_name, shapes):
    """OnnxGraph drops its NumPy initializers once the session exists (~30 MB per network); that
    is only safe while ORT copies them all at build time. Poison them and the outputs must not move."""
    from identitydp.models.onnx_graph import OnnxGraph
    from identitydp.models.registry import weight_path

    graph = OnnxGraph(weight_path(graph_name), weight_path(index_name), weight_path(weights_name), keep_initializers=True)
    names = [i.name for i in graph.session.get_inputs()]
    assert sorted(names) == sorted(shapes)
    rng = np.random.default_rng(0)
    feed = {k: rng.uniform(-1, 1, shapes[k]).astype(np.float32) for k in names}
    if "z" in feed:
        feed["z"] /= np.linalg.norm(feed["z"], axis=1, keepdims=True)
    before = graph(**feed)
    for value in graph.initializers:
        view = value.numpy()  # .numpy() of a CPU OrtValue is a view of the same buffer
        view[...] = np.nan if view.dtype.kind == "f" else 7  # int8 weights and zero points: a wrong value
    floats = [v.numpy() for v in graph.initializers if v.numpy().dtype.kind == "f"]
    assert np.isnan(floats[0]).all()  # the poison reached the buffer ORT was given
    after = graph(**feed)
    assert np.isfinite(after).all() and np.array_equal(before, after)


def test_v2_on_onnx_renders_what_torch_renders(bundled_faces):
    """The default v2 renderer on ONNX Runtime (its texture noise drawn with NumPy for both
    backends) gives the torch renderer's photo to within two levels of 255 on a real face (float
    rounding, carried through the blend and the grain), on fewer than 0.1 % of the values."""
    from identitydp.generate.anonymizer import RENDERER_V2_NAME, IdentityDPAnonymizer

    image = read_image(bundled_faces[0]).pixels
    faces = CenterFaceDetector().detect(image)
    fast = IdentityDPAnonymizer(epsilon=1.0, seed=5, weights=RENDERER_V2_NAME, backend="onnxruntime")
    slow = IdentityDPAnonymizer(epsilon=1.0, seed=5, weights=RENDERER_V2_NAME, backend="torch")
    assert fast.describe()["backend"] == "onnxruntime" and fast.model is None and fast.dlib is None
    assert slow.describe()["backend"] == "torch"
    assert fast._onnx.noise_sides == slow.model.noise_sides()
    a = fast.anonymize_frame(image, faces, None).image.astype(int)
    b = slow.anonymize_frame(image, faces, None).image.astype(int)
    assert np.abs(a - image.astype(int)).max() > 40  # the faces really were repainted
    diff = np.abs(a - b)
    assert diff.max() <= 2 and (diff > 0).mean() < 0.001, (diff.max(), (diff > 0).mean())
    assert IdentityDPAnonymizer(epsilon=1.0, weights=RENDERER_V2_NAME, backend="auto").describe()["backend"] == "onnxruntime"
