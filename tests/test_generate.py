"""The IdentityDP generator: networks, chip warp, bundle, one real training step, checkpoints."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from identitydp.generate.networks import FaceGenerator, MultiScalePatchDiscriminator, NetConfig, count_params

REPO = Path(__file__).resolve().parent.parent


def _builder():
    spec = importlib.util.spec_from_file_location("build_train_bundle", REPO / "scripts" / "build_train_bundle.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_bundle(train_dir: Path, tmp_path_factory) -> Path:
    """A real bundle of 24 training faces (UTKFace and CelebA) built by the bundle script."""
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    builder = _builder()
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
    from identitydp.generate.data import PairIndex, load_bundle

    data = load_bundle(tiny_bundle, size=64)
    meta = json.loads(str(np.load(tiny_bundle)["meta"]))
    assert meta["margin"] == 0.25 and meta["size"] == 128
    assert data.images.shape[1:] == (64, 64, 3) and data.images.dtype == torch.uint8
    assert set(data.source.tolist()) == {0, 1}
    assert bool(((data.landmarks > 0) & (data.landmarks < 64)).all())
    ident = torch.tensor([5, 5, 7, -1, 5, 9, 9])
    pairs = PairIndex(ident, torch.ones(7, dtype=torch.bool))
    idx = torch.arange(7).repeat(20)
    partner = pairs.partner(idx)
    same = ident[partner] == ident[idx]
    has = torch.isin(ident[idx], torch.tensor([5, 9]))
    assert bool(same[has].all()) and bool((partner[has] != idx[has]).all()) and bool((partner[~has] == idx[~has]).all())


def test_one_training_step_and_checkpoint_roundtrip(tiny_bundle: Path, tmp_path: Path) -> None:
    from identitydp.generate.train import Trainer, load_generator
    from identitydp.generate.train_options import TrainConfig

    cfg = TrainConfig(bundle=str(tiny_bundle), out=str(tmp_path / "run"), size=64, batch=4, minutes=1,
                      eval_faces=4, judge="", limit=16)
    trainer = Trainer(cfg)
    # Centred identities: unit vectors, random pairs far from dlib's raw 0.83.
    assert torch.allclose(trainer.z.norm(dim=1), torch.ones(len(trainer.z)), atol=1e-4)
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    losses = trainer.train_step()
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert 0.0 <= float(losses["id"]) <= 2.0
    assert any(not torch.equal(before[k], v) for k, v in trainer.G.state_dict().items())
    trainer.save_full()
    trainer.save_compact()
    trainer.write_samples(columns=4)
    assert list((tmp_path / "run").glob("samples_*.png"))

    again = Trainer(TrainConfig(**{**cfg.__dict__, "resume": str(trainer.full_ckpt)}))
    assert again.step == 1 and again.images_seen == 4
    for a, b in ((trainer.G, again.G), (trainer.D, again.D), (trainer.G_ema, again.G_ema)):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), k
    assert trainer.opt_g.state_dict()["state"].keys() == again.opt_g.state_dict()["state"].keys()
    assert torch.equal(trainer.opt_g.state_dict()["state"][0]["exp_avg"], again.opt_g.state_dict()["state"][0]["exp_avg"])

    model, id_mean, meta = load_generator(tmp_path / "run" / "generator_fp16.safetensors")
    assert float(meta["margin"]) == 0.25 and id_mean.shape == (128,)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = trainer.z[:2]
    with torch.no_grad():
        ref = trainer.G_ema(x, z)[0]
        out = model(x, z)[0]
    assert (out - ref).abs().max() < 0.05  # fp16 export
