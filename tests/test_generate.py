"""The IdentityDP generator: networks, chip warp, bundle, one real training step, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from identitydp.errors import WeightsError
from identitydp.generate.networks import FaceGenerator, MultiScalePatchDiscriminator, NetConfig, count_params



@pytest.fixture(scope="module")
def tiny_bundle(train_dir: Path, tmp_path_factory, bundle_builder) -> Path:
    """A real bundle of 24 training faces (UTKFace and CelebA) built by the bundle script."""
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    builder = bundle_builder
    assert builder.main(["detect", "--data", str(train_dir), "--out", str(out), "--limit", "24"]) == 0
    assert builder.main(["pack", "--out", str(out), "--max-mb", "0.1"]) == 0
    return out.with_suffix(".npz")


@pytest.mark.parametrize("size", [64, 128])
def test_network_shapes(size: int) -> None:
    cfg = NetConfig(size=size)
    g, d = FaceGenerator(cfg), MultiScalePatchDiscriminator(cfg)
    x = torch.rand(2, 3, size, size) * 2 - 1
    z = torch.nn.functional.normalize(torch.randn(2, 128), dim=1)
    with torch.no_grad():
        y, attrs = g(x, z)
        logits = d(y)
    assert y.shape == x.shape and float(y.abs().max()) <= 1.0
    assert [a.shape[-1] for a in attrs] == [4 * 2**k for k in range(cfg.levels)]
    assert [a.shape[1] for a in attrs] == g.encoder.out_channels
    assert len(logits) == cfg.disc_scales and logits[0].shape[-1] > logits[1].shape[-1]
    if size == 128:
        # The shipped generator must stay a single fp16 file under 16 MB, G + D under 16 MB too.
        assert count_params(g) * 2 < 14e6
        assert (count_params(g) + count_params(d)) * 2 < 16e6


def test_chip_warp_matches_opencv(train_dir: Path) -> None:
    """The differentiable crop→chip resampling equals cv2.warpAffine with the same matrix."""
    from identitydp.generate.identity import resample, warp_theta

    img = cv2.cvtColor(cv2.imread(str(sorted((train_dir / "celeba").glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
    crop = cv2.resize(img, (128, 128))
    matrix = np.array([[1.1, 0.1, -5.0], [-0.1, 1.1, 8.0]])
    ref = cv2.warpAffine(crop, matrix, (150, 150), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    theta = torch.from_numpy(warp_theta(matrix[None], 128, 150))
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
    out = resample(x, theta, 150)[0].permute(1, 2, 0).numpy()
    inner = (slice(20, 130), slice(20, 130))
    assert np.abs(out[inner] - ref[inner].astype(np.float32)).mean() < 1.0


def test_laplace_sphere_noise_shapes() -> None:
    from identitydp.generate.identity import laplace_sphere_noise

    z = torch.nn.functional.normalize(torch.randn(256, 128), dim=1)
    noisy, ratio = laplace_sphere_noise(z, ratio_range=(0.05, 20.0))
    assert noisy.shape == z.shape and torch.allclose(noisy.norm(dim=1), torch.ones(256), atol=1e-5)
    cos = (noisy * z).sum(1)
    # Little noise keeps the identity, much noise loses it.
    assert float(cos[ratio < 0.1].mean()) > 0.98 and abs(float(cos[ratio > 10].mean())) < 0.2


def test_bundle_and_pairs(tiny_bundle: Path) -> None:
    from identitydp.training.data import PairIndex, load_bundle

    data = load_bundle(tiny_bundle, size=64)
    meta = json.loads(str(np.load(tiny_bundle)["meta"]))
    assert meta["margin"] == 0.25 and meta["size"] == 128
    assert data.images.shape[1:] == (64, 64, 3) and data.images.dtype == torch.uint8
    assert set(data.source.tolist()) <= {0, 1, 2} and {0, 1} <= set(data.source.tolist())  # UTKFace, CelebA, CelebA-256
    assert data.landmarks68 is not None and data.landmarks68.shape[1:] == (68, 2)
    assert bool(((data.landmarks > 0) & (data.landmarks < 64)).all())
    ident = torch.tensor([5, 5, 7, -1, 5, 9, 9])
    pairs = PairIndex(ident, torch.ones(7, dtype=torch.bool))
    idx = torch.arange(7).repeat(20)
    partner = pairs.partner(idx)
    same = ident[partner] == ident[idx]
    has = torch.isin(ident[idx], torch.tensor([5, 9]))
    assert bool(same[has].all()) and bool((partner[has] != idx[has]).all()) and bool((partner[~has] == idx[~has]).all())


@pytest.fixture(scope="module")
def trained(tiny_bundle: Path, tmp_path_factory):
    """A trainer after one real training step on real faces, with its checkpoints written."""
    from identitydp.training.aei import Trainer
    from identitydp.training.aei_options import TrainConfig

    cfg = TrainConfig(bundle=str(tiny_bundle), out=str(tmp_path_factory.mktemp("run")), size=64, batch=4,
                      minutes=1, eval_faces=4, judge="", id2="", limit=16)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    trainer.losses = trainer.train_step()
    trainer.changed = any(not torch.equal(before[k], v) for k, v in trainer.G.state_dict().items())
    trainer.save_full()
    trainer.save_compact()
    return trainer


def test_one_training_step_and_checkpoint_roundtrip(trained) -> None:
    from identitydp.generate.checkpoint import load_generator
    from identitydp.training.aei import Trainer
    from identitydp.training.aei_options import TrainConfig

    trainer = trained
    # Centred identities are unit vectors.
    assert torch.allclose(trainer.z.norm(dim=1), torch.ones(len(trainer.z)), atol=1e-4)
    assert all(math.isfinite(float(v.detach())) for v in trainer.losses.values())
    assert 0.0 <= float(trainer.losses["id"].detach()) <= 2.0
    assert trainer.changed
    trainer.write_samples(columns=4)
    assert list(trainer.out.glob("samples_*.png"))

    again = Trainer(TrainConfig(**{**trainer.cfg.__dict__, "resume": str(trainer.full_ckpt)}))
    assert again.step == 1 and again.images_seen == 4
    for a, b in ((trainer.G, again.G), (trainer.D, again.D), (trainer.G_ema, again.G_ema)):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), k
    sa, sb = trainer.opt_g.state_dict()["state"], again.opt_g.state_dict()["state"]
    assert sa.keys() == sb.keys() and torch.equal(sa[0]["exp_avg"], sb[0]["exp_avg"])

    model, id_mean, meta = load_generator(trainer.out / "generator_fp16.safetensors")
    assert float(meta["margin"]) == 0.25 and id_mean.shape == (128,)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = trainer.z[:2]
    with torch.no_grad():
        ref = trainer.G_ema(x, z)[0]
        out = model(x, z)[0]
    assert (out - ref).abs().max() < 0.05  # fp16 export

    # Warm start from an exported generator alone (e.g. the shipped one): G and EMA from it, D fresh.
    warm = Trainer(TrainConfig(**{**trainer.cfg.__dict__, "out": str(trainer.out / "warm"),
                                  "init": str(trainer.out / "generator_fp16.safetensors")}))
    for k, v in model.state_dict().items():
        assert torch.equal(warm.G.state_dict()[k], v) and torch.equal(warm.G_ema.state_dict()[k], v), k
    assert torch.equal(warm.id_mean, id_mean)


def test_resumed_adam_moments_take_their_parameters_strides() -> None:
    """Fused Adam on CUDA refuses channels_last parameters with contiguous moments (the --resume
    failure of the first GPU window); moments read back from a checkpoint are contiguous."""
    from identitydp.training.state import match_param_strides as _match_param_strides

    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(conv.parameters())
    conv(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    sd["state"] = {i: {k: v.contiguous().clone() for k, v in st.items()} for i, st in sd["state"].items()}
    fresh = torch.optim.Adam(conv.parameters())
    fresh.load_state_dict(sd)
    assert fresh.state[conv.weight]["exp_avg"].stride() != conv.weight.stride()
    _match_param_strides(fresh)
    for p in conv.parameters():
        assert fresh.state[p]["exp_avg"].stride() == p.stride() and fresh.state[p]["exp_avg_sq"].stride() == p.stride()
    assert torch.equal(fresh.state[conv.weight]["exp_avg"], sd["state"][0]["exp_avg"])


# ---------------------------------------------------------------------- the anonymizer


def _registered() -> bool:
    from identitydp.models.registry import registry

    return "identitydp_generator" in registry()


@pytest.fixture(scope="module")
def lfw_face(lfw_images):
    from identitydp.detect import CenterFaceDetector

    img = cv2.cvtColor(cv2.imread(str(lfw_images[0])), cv2.COLOR_BGR2RGB)
    det = CenterFaceDetector().detect(img)
    assert len(det) >= 1
    return img, det


@pytest.fixture(scope="module")
def generator_file(trained) -> Path:
    """The registered generator if there is one, else the one-step generator trained above on real
    training faces (exercises the whole path; its faces are not meant to look good)."""
    if _registered():
        from identitydp.models.registry import weight_path

        return weight_path("identitydp_generator")
    return trained.out / "generator_fp16.safetensors"


def test_missing_generator_is_a_loud_error() -> None:
    from identitydp.anonymizers import make_anonymizer
    from identitydp.generate.anonymizer import IdentityDPAnonymizer

    if _registered():
        pytest.skip("a trained generator is registered")
    with pytest.raises(WeightsError):
        IdentityDPAnonymizer(epsilon=4.0)
    with pytest.raises(WeightsError):
        make_anonymizer("identitydp", epsilon=4.0)


def test_anonymizer_on_lfw(lfw_face, generator_file: Path) -> None:
    from identitydp.align import align_face, face_mask
    from identitydp.generate.anonymizer import IdentityDPAnonymizer

    img, det = lfw_face
    anon = IdentityDPAnonymizer(epsilon=2.0, seed=7, weights=generator_file)
    result = anon.anonymize_frame(img, det, np.random.default_rng(0))
    out = result.image
    assert out.shape == img.shape and out.dtype == np.uint8
    assert [f.status for f in result.faces] == ["anonymized"] * len(det)
    priv = result.faces[0].privacy
    assert priv["mechanism"] == "laplace" and priv["seeded"] is True

    # Changed inside the face, bit-identical outside the (warped, slightly dilated) blend mask.
    support = np.zeros(img.shape[:2], np.float32)
    for lm in det.landmarks:
        aligned = align_face(img, lm, size=anon.size, margin=anon.margin)
        mask = (face_mask(anon.size, anon.margin) > 0).astype(np.float32)
        support = np.maximum(support, cv2.warpAffine(mask, aligned.inverse, img.shape[1::-1], flags=cv2.INTER_LINEAR))
    support = cv2.dilate((support > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert np.array_equal(out[~support], img[~support])
    # ... and outside every detector box enlarged by PASTE_REGION (the evaluation's face regions).
    from identitydp.blend import box_region_mask
    from identitydp.generate.anonymizer import PASTE_REGION

    region = np.zeros(img.shape[:2], bool)
    for box in det.boxes:
        region |= box_region_mask(img.shape[:2], box, PASTE_REGION)
    assert np.array_equal(out[~region], img[~region])
    x1, y1, x2, y2 = det.boxes[0].astype(int)
    assert np.abs(out[y1:y2, x1:x2].astype(int) - img[y1:y2, x1:x2]).mean() > 2.0

    # Seeded runs are reproducible; another seed gives another face.
    again = IdentityDPAnonymizer(epsilon=2.0, seed=7, weights=generator_file).anonymize_frame(img, det, np.random.default_rng(0))
    other = IdentityDPAnonymizer(epsilon=2.0, seed=8, weights=generator_file).anonymize_frame(img, det, np.random.default_rng(0))
    assert np.array_equal(again.image, out)
    assert not np.array_equal(other.image, out)

    # Video: one release per track, reused on the next frame.
    tracked = IdentityDPAnonymizer(epsilon=2.0, seed=9, weights=generator_file)
    first = tracked.anonymize_tracked(img, det, list(range(len(det))), np.random.default_rng(0))
    second = tracked.anonymize_tracked(img, det, list(range(len(det))), np.random.default_rng(0))
    assert first.faces[0].privacy is not None and second.faces[0].privacy is None
    assert np.array_equal(first.image, second.image)
    tracked.end_track(0)


def test_failure_masks_the_face(lfw_face, generator_file: Path) -> None:
    from identitydp.detect import Detections
    from identitydp.generate.anonymizer import IdentityDPAnonymizer

    img, det = lfw_face
    bad = Detections(det.boxes[:1], det.scores[:1], np.full((1, 5, 2), math.nan, np.float32))
    result = IdentityDPAnonymizer(epsilon=1.0, seed=1, weights=generator_file).anonymize_frame(img, bad, np.random.default_rng(0))
    assert result.faces[0].status == "masked" and result.faces[0].error
    x1, y1, x2, y2 = det.boxes[0].astype(int)
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    assert (result.image[cy, cx] == 0).all()


def test_faces_of_a_frame_go_as_one_batch_and_a_bad_one_costs_only_itself(generator_file: Path) -> None:
    """Four faces in one frame: one recognizer / renderer batch; a face with broken landmarks is
    masked, the others are anonymized with one release each (as when they went one by one)."""
    from identitydp.detect import CenterFaceDetector, Detections
    from identitydp.generate.anonymizer import IdentityDPAnonymizer

    faces = sorted((Path(__file__).parent / "data" / "faces").glob("*.jpg"))
    canvas = np.full((300, 1040, 3), 90, np.uint8)
    for k, path in enumerate(faces):
        canvas[25:275, 10 + k * 257 : 260 + k * 257] = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    det = CenterFaceDetector().detect(canvas)
    assert len(det) == 4
    landmarks = det.landmarks.copy()
    landmarks[2] = np.nan
    broken = Detections(det.boxes, det.scores, landmarks)
    anon = IdentityDPAnonymizer(epsilon=1.0, seed=3, weights=generator_file)
    result = anon.anonymize_frame(canvas, broken, np.random.default_rng(0))
    assert [f.status for f in result.faces] == ["anonymized", "anonymized", "masked", "anonymized"]
    assert [f.index for f in result.faces] == [0, 1, 2, 3]
    assert all(result.faces[i].privacy["epsilon"] == 1.0 for i in (0, 1, 3)) and result.faces[2].privacy is None
    for i in (0, 1, 3):
        x1, y1, x2, y2 = det.boxes[i].astype(int)
        assert np.abs(result.image[y1:y2, x1:x2].astype(int) - canvas[y1:y2, x1:x2]).mean() > 2.0


def test_anonymizer_with_public_projection(lfw_face, generator_file: Path) -> None:
    """Noise in the registered 16-d public projection: a valid release with the projected domain."""
    from identitydp.generate.anonymizer import IdentityDPAnonymizer

    img, det = lfw_face
    anon = IdentityDPAnonymizer(epsilon=4.0, seed=3, weights=generator_file, projection=True)
    result = anon.anonymize_frame(img, det, np.random.default_rng(0))
    assert [f.status for f in result.faces] == ["anonymized"] * len(det)
    priv = result.faces[0].privacy
    assert priv["k"] == 16 and priv["radius"] > 0 and priv["epsilon"] == 4.0
    assert anon.describe()["projection"] == "identity_projection_k16.safetensors"
    assert not np.array_equal(result.image, img)


def test_mirror_fusion_renders_a_mirrored_photo_as_the_mirrored_face(lfw_face, generator_file: Path) -> None:
    """Fusing the direct and the mirrored rendering across the midline makes the renderer
    mirror-equivariant: the mirrored crop gives the mirrored face (up to uint8 rounding), and the
    fused face differs from the single rendering only on the right half, where the shipped
    generator's streak artefacts sit."""
    from identitydp.align import align_face
    from identitydp.generate.anonymizer import IdentityDPAnonymizer

    img, det = lfw_face
    fused = IdentityDPAnonymizer(epsilon=math.inf, weights=generator_file)
    single = IdentityDPAnonymizer(epsilon=math.inf, weights=generator_file, mirror_fusion=False, geometry=False)
    crop = align_face(img, det.landmarks[0], size=fused.size, margin=fused.margin).crop
    z = fused._identities(img, det.landmarks[:1])
    a = fused.render(crop[None], z)[0].astype(int)
    b = fused.render(crop[None, :, ::-1], z)[0].astype(int)
    assert np.abs(a[:, ::-1] - b).mean() < 1.0 and np.percentile(np.abs(a[:, ::-1] - b), 99) <= 3
    plain = single.render(crop[None], z)[0].astype(int)
    s = fused.size
    assert np.abs(a[:, : s // 3] - plain[:, : s // 3]).mean() < 1.0
    assert np.abs(a[:, 2 * s // 3 :] - plain[:, 2 * s // 3 :]).mean() > 3.0
