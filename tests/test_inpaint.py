"""The v2 renderer: it cannot see the inner face, trains, exports, and anonymizes real faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from identitydp.generate.inpaint import (
    FLIP68,
    INPUT_CHANNELS,
    InpaintConfig,
    InpaintGenerator,
    MaskedPatchDiscriminator,
    flip_landmarks68,
    generator_input,
    inner_face_mask,
    landmark_sketch,
    mask_for,
)

SMALL = {"channels": [8, 16, 32, 32, 32, 32, 32]}


@pytest.fixture(scope="module")
def v2_bundle(train_dir: Path, tmp_path_factory, bundle_builder) -> Path:
    """A real bundle of 30 training faces (UTKFace, CelebA, CelebA-256) with 68-point landmarks."""
    out = tmp_path_factory.mktemp("v2bundle") / "tiny"
    builder = bundle_builder
    assert builder.main(["detect", "--data", str(train_dir), "--out", str(out), "--limit", "30"]) == 0
    assert builder.main(["pack", "--out", str(out), "--max-mb", "0.2"]) == 0
    return out.with_suffix(".npz")


def test_flip_permutation_is_an_involution() -> None:
    assert sorted(FLIP68.tolist()) == list(range(68))
    assert np.array_equal(FLIP68[FLIP68], np.arange(68))
    pts = np.random.default_rng(0).uniform(0, 128, (68, 2))
    assert np.allclose(flip_landmarks68(flip_landmarks68(pts, 128), 128), pts)


def test_mask_covers_the_inner_face_and_sketch_draws_it(real_crop) -> None:
    crop, lm68 = real_crop
    mask = inner_face_mask(lm68, 128)
    assert mask.shape == (128, 128) and mask.dtype == np.float32 and 0 <= mask.min() and mask.max() <= 1
    # Every eye, brow, nose and mouth landmark lies where the mask is fully on.
    inner = np.round(lm68[17:68] - 0.5).astype(int)
    assert np.all(mask[inner[:, 1], inner[:, 0]] == 1.0)
    # Hair above the raised brow line and the crop corners stay context.
    assert mask[:8].max() < 1.0 and mask[-4:, :4].max() == 0.0 and mask[:4, :4].max() == 0.0
    sketch = landmark_sketch(lm68, 128)
    assert sketch.shape == (5, 128, 128) and all(sketch[c].max() > 0.5 for c in range(5))
    # The mirrored geometry draws the mirrored sketch (the group channels are symmetric).
    mirrored = landmark_sketch(flip_landmarks68(lm68, 128), 128)
    assert np.abs(mirrored - sketch[:, :, ::-1]).mean() < 0.01


def test_renderer_cannot_see_the_inner_face(real_crop) -> None:
    """Permuting pixels inside one coarse-colour cell where the mask is 1 (which keeps that cell's
    mean colour) changes nothing the renderer sees, so nothing it outputs: the original inner face
    reaches it only as the coarse colour's cell means (12 numbers on the default 2×2 grid)."""
    crop, lm68 = real_crop
    torch.manual_seed(0)
    g = InpaintGenerator(InpaintConfig(size=128, **SMALL)).eval()
    mask = torch.from_numpy(inner_face_mask(lm68, 128))[None, None]
    sketch = torch.from_numpy(landmark_sketch(lm68, 128))[None]
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    # A 16x16 block inside the cell (rows/cols 64..95) that is fully inside the mask.
    ys, xs = np.nonzero(mask[0, 0].numpy() == 1.0)
    block = None
    for y0 in range(64, 80):
        for x0 in range(32, 96 - 16):
            if x0 // 32 == (x0 + 15) // 32 and bool((mask[0, 0, y0 : y0 + 16, x0 : x0 + 16] == 1).all()):
                block = (y0, x0)
                break
        if block:
            break
    assert block is not None, "no 16x16 block fully inside the mask"
    y0, x0 = block
    x2 = x.clone()
    patch = x2[:, :, y0 : y0 + 16, x0 : x0 + 16].reshape(1, 3, -1)
    perm = torch.randperm(patch.shape[-1])
    x2[:, :, y0 : y0 + 16, x0 : x0 + 16] = patch[:, :, perm].reshape(1, 3, 16, 16)
    assert not torch.equal(x, x2)
    assert torch.allclose(generator_input(x, mask, sketch), generator_input(x2, mask, sketch), atol=1e-5)
    z = torch.nn.functional.normalize(torch.randn(1, 128), dim=1)
    with torch.no_grad():
        a = g(x, mask, sketch, z, torch.Generator().manual_seed(1))
        b = g(x2, mask, sketch, z, torch.Generator().manual_seed(1))
    assert torch.allclose(a[0], b[0], atol=1e-4) and torch.allclose(a[1], b[1], atol=1e-4)
    # ... while the identity vector does change the rendering.
    with torch.no_grad():
        c = g(x, mask, sketch, -z, torch.Generator().manual_seed(1))
    assert float((a[1] - c[1]).abs().mean()) > 1e-4


@pytest.mark.parametrize("size", [64, 128, 256])
def test_network_shapes_and_composite(size: int) -> None:
    cfg = InpaintConfig(size=size, **SMALL)
    g, d = InpaintGenerator(cfg), MaskedPatchDiscriminator(cfg)
    x = torch.rand(2, 3, size, size) * 2 - 1
    m = torch.zeros(2, 1, size, size)
    m[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    sk = torch.rand(2, 5, size, size)
    z = torch.nn.functional.normalize(torch.randn(2, 128), dim=1)
    with torch.no_grad():
        comp, raw = g(x, m, sk, z)
        logits = d(comp, m)
    assert comp.shape == raw.shape == x.shape and float(raw.abs().max()) <= 1.0
    assert torch.equal(comp[m.expand_as(comp) == 0], x[m.expand_as(x) == 0])
    assert len(logits) == cfg.disc_scales
    assert generator_input(x, m, sk).shape[1] == INPUT_CHANNELS


@pytest.fixture(scope="module")
def v2_trained(v2_bundle: Path, tmp_path_factory):
    """Two real training steps of the v2 trainer on real faces, checkpoints written."""
    from identitydp.training.inpaint import InpaintTrainer
    from identitydp.training.options import InpaintTrainConfig

    out = tmp_path_factory.mktemp("v2run")
    cfg = InpaintTrainConfig(bundle=str(v2_bundle), out=str(out), batch=2, eval_faces=4, limit=0, net=SMALL, judge="mobileface")
    trainer = InpaintTrainer(cfg)
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    trainer.losses = [trainer.train_step(), trainer.train_step()]
    trainer.changed = any(not torch.equal(before[k], v) for k, v in trainer.G.state_dict().items())
    trainer.evaluate()
    trainer.save_full()
    trainer.save_compact()
    return trainer


@pytest.mark.parametrize("rows", ["noisy", "swap"])
def test_identity_loss_weight_of_noisy_and_swap_rows(v2_bundle: Path, tmp_path, rows: str) -> None:
    # --w-id-noisy / --w-id-swap scale the identity loss of those rows only: with every row of that
    # kind, 0 leaves no identity loss at all, 1 the plain one; the other factor changes nothing.
    from identitydp.training.inpaint import InpaintTrainer
    from identitydp.training.options import InpaintTrainConfig

    other = "swap" if rows == "noisy" else "noisy"
    losses = {}
    for w in (0.0, 1.0):
        cfg = InpaintTrainConfig(bundle=str(v2_bundle), out=str(tmp_path / f"w{w}"), batch=2, eval_faces=4, net=SMALL,
                                 judge="", p_self=0.0, p_pair=0.0, **{f"p_{rows}": 1.0, f"p_{other}": 0.0},
                                 **{f"w_id_{rows}": w, f"w_id_{other}": 0.0})
        trainer = InpaintTrainer(cfg)
        batch = trainer._batch()
        assert bool(batch[rows].all()) and not bool(batch[other].any())
        losses[w] = float(trainer.train_step()["id"].detach())
    assert losses[0.0] == 0.0 and losses[1.0] > 0.1


def test_high_frequency_hinge_matches_the_eval_measure_and_trains(v2_bundle: Path, tmp_path) -> None:
    # The --w-hf loss measures fine detail exactly as the sharpness ratio does (one is torch and
    # differentiable, the other cv2), and only an excess over the photo costs anything.
    from identitydp.training.inpaint import InpaintTrainer, high_frequency_energy, sharpness_ratio
    from identitydp.training.options import InpaintTrainConfig

    cfg = InpaintTrainConfig(bundle=str(v2_bundle), out=str(tmp_path / "hf"), batch=2, eval_faces=4, net=SMALL,
                             judge="", w_hf=1.0)
    trainer = InpaintTrainer(cfg)
    batch = trainer._batch()
    x, m = batch["x"], batch["mask"]
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    ours = high_frequency_energy(noisy, m) / high_frequency_energy(x, m)
    for i in range(len(x)):
        assert float(ours[i]) > 1.5
        assert float(ours[i]) == pytest.approx(sharpness_ratio(noisy[i:i + 1], x[i:i + 1], m[i:i + 1]), rel=1e-4)
    # Per cell, speckle in one place is not paid for by blur in another; as a whole, it is.
    from identitydp.training.inpaint import excess_detail

    half = x.clone()
    half[..., : x.shape[-1] // 2] = noisy[..., : x.shape[-1] // 2]
    half[..., x.shape[-1] // 2:] = torch.nn.functional.avg_pool2d(x, 5, 1, 2)[..., x.shape[-1] // 2:]
    assert bool((excess_detail(x, x, m, 16) == 0).all())
    assert bool((excess_detail(half, x, m, 16) > excess_detail(half, x, m, 0)).all())
    losses = trainer.train_step()
    assert float(losses["hf"].detach()) >= 0.0 and "hf" in trainer.LOSS_NAMES


def test_gender_consistent_batches(v2_bundle: Path, tmp_path) -> None:
    # --gender-consistent: swap partners on the face's side of the gender midpoint, noisy
    # identities with the face's own gender coordinate (what the default release renders).
    from identitydp.training.inpaint import InpaintTrainer
    from identitydp.training.options import InpaintTrainConfig

    cfg = InpaintTrainConfig(bundle=str(v2_bundle), out=str(tmp_path / "gc"), batch=16, eval_faces=4, net=SMALL,
                             judge="", gender_consistent=True, p_self=0.0, p_pair=0.0, p_swap=0.5, p_noisy=0.5)
    trainer = InpaintTrainer(cfg)
    side, coord, u = trainer.gender_side, trainer.gender_coord, trainer.gender_dir
    assert 0 < float(side[trainer.train_idx].float().mean()) < 1  # both genders in the bundle
    same, swaps = 0, 0
    for _ in range(4):
        batch = trainer._batch()
        idx, other, swap, noisy = batch["idx"], batch["other"], batch["swap"], batch["noisy"]
        assert torch.allclose(batch["z"].norm(dim=1), torch.ones(16), atol=1e-5)
        same += int((side[other[swap]] == side[idx[swap]]).sum())
        swaps += int(swap.sum())
        # a noisy row keeps the face's gender coordinate (its sign survives the renormalisation)
        assert bool(((batch["z"][noisy] @ u).sign() == coord[idx[noisy]].sign()).all())
    assert swaps > 0 and same / swaps > 0.9
    assert float(trainer.train_step()["id"].detach()) > 0


def test_v2_training_steps_and_checkpoint_chain(v2_trained) -> None:
    import math

    from identitydp.generate.checkpoint import EXPORT_FORMAT_V2, load_generator, read_metadata
    from identitydp.training.inpaint import InpaintTrainer
    from identitydp.training.options import InpaintTrainConfig

    t = v2_trained
    assert t.changed
    for losses in t.losses:
        assert all(math.isfinite(float(v.detach())) for v in losses.values())
    assert {"judge_self_to_original", "judge_swap_to_original", "dlib_swap_to_source"} <= set(t._last_eval)
    assert t.write_samples(columns=4).is_file()
    # Exact resumption.
    again = InpaintTrainer(InpaintTrainConfig(**{**t.cfg.__dict__, "resume": str(t.full_ckpt)}))
    assert again.step == t.step == 2
    for a, b in ((t.G, again.G), (t.D, again.D), (t.G_ema, again.G_ema)):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k
    # The compact fp16 checkpoint chains into a new run (what a GPU window starts from); with no
    # --net given, the run takes the checkpoint's own network.
    chained = InpaintTrainer(InpaintTrainConfig(**{**t.cfg.__dict__, "out": str(t.out / "next"), "net": {},
                                                   "init": str(t.out / "ckpt_fp16.safetensors")}))
    assert chained.net_cfg == t.net_cfg
    with pytest.raises(ValueError, match="trained at"):
        InpaintTrainer(InpaintTrainConfig(**{**t.cfg.__dict__, "out": str(t.out / "other"), "net": {},
                                             "size": 2 * t.cfg.size, "resume": str(t.full_ckpt)}))
    assert chained.step == t.step
    for (k, va), vb in zip(t.D.state_dict().items(), chained.D.state_dict().values()):
        if va.is_floating_point():
            assert torch.allclose(va, vb, atol=1e-2, rtol=1e-2), k
    path = t.out / "generator_fp16.safetensors"
    assert read_metadata(path)["format"] == EXPORT_FORMAT_V2
    model, id_mean, meta = load_generator(path)
    assert id_mean.shape == (128,) and float(meta["margin"]) == 0.25
    # The export carries the training identities' mean style (the truncation trick's centre).
    expected = t.G_ema.mean_style(t.z[~t.data.heldout])
    assert model.style_mean is not None and torch.allclose(model.style_mean, expected, atol=1e-5)


def test_sketch_aware_discriminator_chains_and_trains(v2_trained) -> None:
    # --disc-sketch on a checkpoint trained without it: the new sketch inputs start at zero
    # weight, so the loaded discriminator's verdicts are unchanged; the matching-aware step
    # (real photos with another face's sketch count as fakes) trains; cutting back works too.
    from identitydp.training.inpaint import InpaintTrainer
    from identitydp.training.options import InpaintTrainConfig

    t = v2_trained
    ckpt = str(t.out / "ckpt_fp16.safetensors")
    sk = InpaintTrainer(InpaintTrainConfig(**{**t.cfg.__dict__, "out": str(t.out / "sketch"), "init": ckpt,
                                              "disc_sketch": True, "w_mismatch": 0.5}))
    assert sk.D.sketch_channels == 5
    batch = t._batch()
    with torch.no_grad():
        plain = [o.float() for o in t.D.eval()(batch["x"], batch["mask"])]
        with_sketch = [o.float() for o in sk.D.eval()(batch["x"], batch["mask"], batch["sketch"])]
        with pytest.raises(ValueError, match="sketch channels"):
            sk.D(batch["x"], batch["mask"])
    t.D.train()
    for a, b in zip(plain, with_sketch):
        assert torch.allclose(a, b, atol=2e-2), float((a - b).abs().max())
    sk.D.train()
    first = sk.D.scales[0][0].weight_orig.detach().clone()
    losses = sk.train_step()
    assert all(torch.isfinite(v.detach()).all() for v in losses.values())
    assert float((sk.D.scales[0][0].weight_orig.detach()[:, 4:] - first[:, 4:]).abs().max()) > 0
    sk.save_compact()
    back = InpaintTrainer(InpaintTrainConfig(**{**t.cfg.__dict__, "out": str(t.out / "back"),
                                                "init": str(t.out / "sketch" / "ckpt_fp16.safetensors")}))
    assert back.D.sketch_channels == 0 and back.D.scales[0][0].weight_orig.shape[1] == 4


def test_truncation_pulls_rare_styles_to_the_mean(v2_trained, real_crop, tmp_path) -> None:
    """ψ = 1 renders exactly as without truncation, ψ = 0 renders every identity with the mean
    style, ψ in between moves the style linearly; an export with a style mean renders with any ψ,
    weights without one refuse ψ < 1."""
    from identitydp.generate.anonymizer import RENDERER_V2_NAME, IdentityDPAnonymizer
    from identitydp.generate.checkpoint import export_generator, load_generator
    from identitydp.models.registry import weight_path

    model, id_mean, _ = load_generator(weight_path(RENDERER_V2_NAME))
    z = torch.nn.functional.normalize(torch.randn(2, 128, generator=torch.Generator().manual_seed(0)), dim=1)
    model.style_mean = model.mean_style(torch.nn.functional.normalize(torch.randn(500, 128), dim=1))
    crop, lm68 = real_crop
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    m = torch.from_numpy(mask_for(model.cfg, lm68))[None, None]
    sk = torch.from_numpy(landmark_sketch(model.sketch_geometry(lm68), 128))[None]

    def render(psi: float | None) -> torch.Tensor:
        """Both identities, each with the same texture noise."""
        extra = {} if psi is None else {"truncation": psi}
        return torch.cat([model(x, m, sk, z[i : i + 1], torch.Generator().manual_seed(1), **extra)[1] for i in range(2)])

    with torch.no_grad():
        assert torch.equal(render(1.0), render(None))
        zero = render(0.0)
        assert torch.allclose(zero[0], zero[1], atol=1e-5)  # one style for every identity
        gap = [float((out[0] - out[1]).abs().mean()) for out in (zero, render(0.5), render(1.0))]
    assert gap[0] < 1e-5 < gap[1] < gap[2]
    trained = v2_trained.out / "generator_fp16.safetensors"
    assert IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=trained, truncation=0.5).describe()["truncation"] == 0.5
    bare = tmp_path / "no_style_mean.safetensors"
    model.style_mean = None
    export_generator(model, id_mean, bare, {"margin": 0.25})
    assert IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=bare).describe()["truncation"] == 1.0
    with pytest.raises(ValueError, match="style mean"):
        IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=bare, truncation=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=trained, truncation=1.5)


def test_v2_anonymizer_on_lfw(v2_trained, lfw_images) -> None:
    """The v2 path end to end on a real photo: faces change, nothing outside the paste region
    changes, a seeded run is reproducible, a track keeps one identity and one texture."""
    from identitydp.blend import enlarged_box
    from identitydp.detect import CenterFaceDetector
    from identitydp.generate.anonymizer import PASTE_REGION, IdentityDPAnonymizer
    from identitydp.io import read_image

    weights = v2_trained.out / "generator_fp16.safetensors"
    image = read_image(lfw_images[3]).pixels
    det = CenterFaceDetector().detect(image)
    anon = IdentityDPAnonymizer(epsilon=1.0, weights=weights, seed=7)
    assert anon.describe()["renderer"] == "v2-inpainting"
    res = anon.anonymize_frame(image, det, None)
    assert [f.status for f in res.faces] == ["anonymized"] * len(det)
    changed = np.abs(res.image.astype(int) - image.astype(int)).max(2) > 0
    assert changed.any()
    allowed = np.zeros_like(changed)
    for box in det.boxes:
        x1, y1, x2, y2 = enlarged_box(box, PASTE_REGION)
        allowed[max(0, int(np.floor(y1))) : int(np.ceil(y2)), max(0, int(np.floor(x1))) : int(np.ceil(x2))] = True
    assert not (changed & ~allowed).any()
    again = IdentityDPAnonymizer(epsilon=1.0, weights=weights, seed=7).anonymize_frame(image, det, None)
    assert np.array_equal(again.image, res.image)
    tracked = IdentityDPAnonymizer(epsilon=1.0, weights=weights)
    first = tracked.anonymize_tracked(image, det, [5] * len(det), None)
    second = tracked.anonymize_tracked(image, det, [5] * len(det), None)
    assert np.array_equal(first.image, second.image)
    assert first.faces[0].privacy is not None and second.faces[0].privacy is None


def test_multiband_blend_and_grain_on_a_real_crop(real_crop) -> None:
    from identitydp.blend import grain_level, match_grain, multiband_blend

    crop, lm68 = real_crop
    mask = inner_face_mask(lm68, 128)
    flat = np.full_like(crop, 128)
    out = multiband_blend(flat, crop, mask)
    assert out.shape == crop.shape and out.dtype == np.uint8
    inner = mask == 1.0
    import cv2

    far = cv2.distanceTransform((mask == 0.0).astype(np.uint8), cv2.DIST_L2, 5) > 16  # 16 px off the region
    # Deep inside: the flat image; far outside: the photo.
    assert np.abs(out[inner].astype(int) - 128).mean() < 12
    assert np.abs(out[far].astype(int) - crop[far].astype(int)).mean() < 3
    rng = np.random.default_rng(0)
    grained = match_grain(flat, crop, mask, rng)
    assert np.array_equal(grained[mask == 0.0], flat[mask == 0.0])
    ring_level = grain_level(crop, (mask == 0.0))
    assert 0 < grain_level(grained, inner) <= max(ring_level, 6.0) + 1.0


def test_grain_level_reads_noise_not_texture() -> None:
    # Pure noise: the estimate is its σ. Strong texture (stripes) plus the same noise: still the
    # noise, not the texture's contrast.
    from identitydp.blend import grain_level

    rng = np.random.default_rng(0)
    region = np.ones((160, 160), bool)
    for sigma in (1.5, 3.0, 6.0):
        flat = np.clip(128 + rng.normal(0, sigma, (160, 160)), 0, 255).astype(np.uint8)
        assert abs(grain_level(np.repeat(flat[..., None], 3, 2), region) - sigma) < 0.2 * sigma
    stripes = np.where((np.arange(160) // 4) % 2 == 0, 90.0, 170.0)[None, :].repeat(160, 0)
    stripes[:, 80:] = 128.0  # half the region textured, half flat
    noisy = np.clip(stripes + rng.normal(0, 2.0, stripes.shape), 0, 255).astype(np.uint8)
    assert abs(grain_level(np.repeat(noisy[..., None], 3, 2), region) - 2.0) < 0.5


def test_seam_and_sharpness_metrics_see_a_hard_paste(lfw_images) -> None:
    """A blurred face pasted as a hard rectangle has a visible seam and lost detail; the same
    blur with a feathered multi-band edge has less seam; the photo itself scores 1."""
    import cv2

    from identitydp.blend import multiband_blend
    from identitydp.detect import CenterFaceDetector
    from identitydp.eval.image_metrics import high_frequency_energy, seam_ratios
    from identitydp.io import read_image

    image = read_image(lfw_images[0]).pixels
    box = CenterFaceDetector().detect(image).boxes[0]
    x1, y1, x2, y2 = (int(v) for v in box)
    blurred = cv2.GaussianBlur(image, (0, 0), 4)
    hard = image.copy()
    hard[y1:y2, x1:x2] = np.clip(blurred[y1:y2, x1:x2].astype(int) + 25, 0, 255).astype(np.uint8)
    alpha = np.zeros(image.shape[:2], np.float32)
    alpha[y1:y2, x1:x2] = 1
    alpha = cv2.GaussianBlur(alpha, (0, 0), 6) * (alpha > 0)
    soft = multiband_blend(np.clip(blurred.astype(int) + 25, 0, 255).astype(np.uint8), image, alpha)
    hard_seam = seam_ratios(image, hard)
    soft_seam = seam_ratios(image, soft)
    assert hard_seam is not None and soft_seam is not None
    assert hard_seam[0] / hard_seam[1] > 2.5 and soft_seam[0] / soft_seam[1] < 0.7 * hard_seam[0] / hard_seam[1]
    assert high_frequency_energy(hard, box) < 0.5 * high_frequency_energy(image, box)
    assert seam_ratios(image, image) is None


def test_larger_convex_region_and_shape_model(real_crop, tmp_path) -> None:
    """The repaint region can reach the hairline as a convex shape, and a renderer with a shape
    model draws the landmarks projected onto its leading modes; both ship with the weights."""
    from identitydp.generate.checkpoint import export_generator, load_generator
    from identitydp.generate.inpaint import mask_for
    from identitydp.generate.inpaint_conditions import project_shape
    from identitydp.training.inpaint import fit_shape_model

    crop, lm68 = real_crop
    small = InpaintConfig(size=128, **SMALL)
    big = InpaintConfig(size=128, **SMALL, mask_lift=1.0, mask_grow=0.06, mask_convex=True, shape_components=4)
    m_small, m_big = mask_for(small, lm68), mask_for(big, lm68)
    assert m_big.sum() > 1.15 * m_small.sum() and np.all(m_big >= m_small - 1e-6)
    g = InpaintGenerator(big)
    rng = np.random.default_rng(0)
    shapes = lm68[None] + rng.normal(0, 2.0, (200, 68, 2))
    mean, basis = fit_shape_model(shapes, 128, 4)
    g.shape_mean.copy_(torch.from_numpy(mean))
    g.shape_basis.copy_(torch.from_numpy(basis))
    reduced = g.sketch_geometry(lm68)
    assert reduced.shape == (68, 2) and not np.allclose(reduced, lm68)
    # Projection: projecting again changes nothing.
    assert np.allclose(g.sketch_geometry(reduced), reduced, atol=1e-6)
    assert np.allclose(InpaintGenerator(small).sketch_geometry(lm68), lm68)
    path = tmp_path / "g.safetensors"
    export_generator(g, torch.zeros(128), path, {"margin": 0.25})
    loaded, _, _ = load_generator(path)
    assert loaded.cfg.shape_components == 4 and loaded.cfg.mask_convex
    assert np.allclose(loaded.sketch_geometry(lm68), reduced, atol=1e-3)
    # A network with fewer modes starts from this one's weights with the leading modes (the
    # k-mode model of the same faces), as a fine-tune to ``shape_components`` 2 does.
    from identitydp.training.inpaint import _load_matching

    two = InpaintGenerator(InpaintConfig(size=128, **SMALL, mask_lift=1.0, mask_grow=0.06, mask_convex=True, shape_components=2))
    assert _load_matching(two, g.state_dict())
    assert torch.equal(two.shape_basis, g.shape_basis[:2]) and torch.equal(two.shape_mean, g.shape_mean)
    assert np.allclose(two.sketch_geometry(lm68), project_shape(lm68, mean, basis[:2], 128), atol=1e-4)
    assert not _load_matching(g, two.state_dict())  # fewer modes than wanted: the caller fits them


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path) -> None:
    from identitydp.training.inpaint import cpu_has_native_bf16

    def flags(text: str) -> Path:
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nflags\t\t: {text}\n\nprocessor\t: 1\nflags\t\t: {text}\n")
        return path

    assert cpu_has_native_bf16(flags("fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni"))
    assert cpu_has_native_bf16(flags("fpu avx512f amx_tile amx_bf16"))
    # AVX-512 without bf16: oneDNN would emulate it, slower than fp32.
    assert not cpu_has_native_bf16(flags("fpu sse2 avx2 avx512f avx512bw avx512vl"))
    assert not cpu_has_native_bf16(tmp_path / "absent")


def test_training_projection_noise_matches_the_shipped_mechanism() -> None:
    """The trainer's projection-noise identities have the distribution the default mechanism
    releases (same mean cosine to the input at a fixed ε), unit norm, inside the decoded ball."""
    from identitydp.generate.anonymizer import PROJECTION_NAME
    from identitydp.generate.identity import laplace_projection_noise
    from identitydp.models.registry import weight_path
    from identitydp.privacy import Projection, ReproducibleRNG, make_mechanism

    proj = Projection.load(weight_path(PROJECTION_NAME))
    rng = np.random.default_rng(0)
    z = proj.to_embeddings(proj.clip(rng.standard_normal((2000, proj.k))))  # identities of the public subspace
    g = torch.Generator().manual_seed(0)
    for eps in (4.0, 64.0):
        ours, drawn = laplace_projection_noise(torch.from_numpy(z), proj, g, epsilon_range=(eps, eps))
        assert torch.allclose(drawn, torch.full_like(drawn, eps))
        assert torch.allclose(ours.norm(dim=1), torch.ones(len(z), dtype=ours.dtype))
        released = make_mechanism("laplace", epsilon=eps, domain=proj, rng=ReproducibleRNG(1)).perturb(z).embeddings
        cos_ours = float((ours.numpy() * z).sum(1).mean())
        cos_mech = float((np.asarray(released) * z).sum(1).mean())
        assert abs(cos_ours - cos_mech) < 0.03, (eps, cos_ours, cos_mech)


def test_training_sharpness_ratio_on_real_crops(real_crop) -> None:
    """1 for the photo itself, far below for a blurred copy, inside the repainted region."""
    import cv2

    from identitydp.training.inpaint import sharpness_ratio

    crop, lm68 = real_crop
    mask = mask_for(InpaintConfig(size=crop.shape[0]), lm68)
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    blurred = torch.from_numpy(cv2.GaussianBlur(crop, (0, 0), 2.0)).permute(2, 0, 1)[None].float() / 127.5 - 1
    m = torch.from_numpy(mask)[None, None]
    assert sharpness_ratio(x, x, m) == pytest.approx(1.0)
    assert sharpness_ratio(blurred, x, m) < 0.3


def test_registered_v2_renderer_from_the_cli(lfw_images, tmp_path) -> None:
    """``--renderer v2`` runs the registered v2 weights end to end on a real photo: the face
    changes, the report says which renderer ran, and int8 (a v1-only option) is refused."""
    import json

    from identitydp.cli import main as cli_main
    from identitydp.io import read_image

    photo, out, report = lfw_images[5], tmp_path / "out.png", tmp_path / "report.json"
    args = ["anonymize", str(photo), "-o", str(out), "--renderer", "v2", "--ledger", str(tmp_path / "ledger.sqlite"),
            "--report", str(report), "--quiet"]
    assert cli_main(args) == 0
    before, after = read_image(photo).pixels, read_image(out).pixels
    assert np.abs(before.astype(int) - after.astype(int)).max() > 40
    text = json.dumps(json.loads(report.read_text()))
    assert "v2-inpainting" in text and "identitydp_renderer_v2" in text
    assert '"sharpen": 0.35' in text  # the product default, recorded
    assert cli_main(args + ["--precision", "int8", "--overwrite"]) == 3
    assert cli_main(args + ["--sharpen", "0.5", "--renderer", "v1", "--overwrite"]) == 3
    assert cli_main(["anonymize", str(photo), "-o", str(out), "--method", "blur", "--sharpen", "0.5", "--quiet",
                     "--overwrite"]) == 3


def test_sharpen_is_a_v2_product_default_that_an_explicit_value_overrides() -> None:
    from identitydp.generate.anonymizer import RENDERERS
    from identitydp.jobs import PRODUCT_SHARPEN, with_product_defaults

    assert with_product_defaults("identitydp", {"epsilon": 1.0})["sharpen"] == PRODUCT_SHARPEN
    assert with_product_defaults("identitydp", {"epsilon": 1.0, "weights": RENDERERS["v2"]})["sharpen"] == PRODUCT_SHARPEN
    assert with_product_defaults("identitydp", {"epsilon": 1.0, "sharpen": 0.0})["sharpen"] == 0.0
    assert "sharpen" not in with_product_defaults("identitydp", {"epsilon": 1.0, "weights": RENDERERS["v1"]})
    assert "sharpen" not in with_product_defaults("blur", {"sigma": 0.1})


def test_shape_modes_limit_the_geometry_the_renderer_gets(real_crop, lfw_images, tmp_path) -> None:
    """The registered v2 renderer's sketch is the face's 68 landmarks projected onto the first
    K modes of its shape model (by default 2, at most the number it was trained with): fewer
    modes give the rendering less of the face's own shape; K is validated; the CLI passes it,
    refuses more modes than the renderer has, and refuses it for v1."""
    from identitydp.cli import main as cli_main
    from identitydp.generate.anonymizer import DEFAULT_SHAPE_MODES, IdentityDPAnonymizer, trained_shape_modes
    from identitydp.generate.inpaint_conditions import project_shape

    crop, lm68 = real_crop
    trained = trained_shape_modes("identitydp_renderer_v2")
    assert trained >= DEFAULT_SHAPE_MODES == 2 and trained_shape_modes("identitydp_generator") == 0
    default = IdentityDPAnonymizer(epsilon=1.0, seed=0)
    one = IdentityDPAnonymizer(epsilon=1.0, seed=0, shape_modes=1)
    assert default.describe()["shape_modes"] == 2 and one.describe()["shape_modes"] == 1
    assert default._shape_model[1].shape == (2, 136) and one._shape_model[1].shape == (1, 136)

    def error(shape_model) -> float:  # px from the face's own landmarks
        return float(np.linalg.norm(project_shape(lm68, *shape_model, 128) - lm68, axis=1).mean())

    assert error(one._shape_model) > error(default._shape_model) + 0.2
    identity = np.eye(128)[0]
    out2, _ = default.inpaint(crop, identity, noise_seed=1)
    out1, _ = one.inpaint(crop, identity, noise_seed=1)
    assert np.abs(out2.astype(int) - out1.astype(int)).max() > 20  # same identity and noise, other geometry
    for bad in (0, trained + 1, 2.0, True):
        with pytest.raises(ValueError, match="shape_modes"):
            IdentityDPAnonymizer(epsilon=1.0, seed=0, shape_modes=bad)
    with pytest.raises(ValueError, match="v2"):
        IdentityDPAnonymizer(epsilon=1.0, seed=0, weights="identitydp_generator", shape_modes=2)
    args = ["anonymize", str(lfw_images[5]), "-o", str(tmp_path / "out.png"), "--ledger", str(tmp_path / "l.sqlite"),
            "--quiet", "--shape-modes", str(trained)]
    assert cli_main(args) == 0
    assert cli_main(args + ["--renderer", "v1", "--overwrite"]) == 3  # a conflict of options, said in one line
    assert cli_main(args[:-1] + [str(trained + 1), "--overwrite"]) == 3  # more modes than the renderer has


def test_train_command_stops_cleanly_on_sigterm(v2_bundle, tmp_path) -> None:
    """`identitydp train` on real faces: SIGTERM finishes the step, evaluates, writes every
    checkpoint and exits 0 (how a CPU run is paused and how a GPU window ends)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "identitydp.cli", "train", "--bundle", str(v2_bundle), "--out", str(out),
           "--batch", "2", "--eval-faces", "4", "--judge", "", "--threads", "1", "--minutes", "20",
           "--log-every-s", "0", "--net", json.dumps(SMALL)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen = []
    deadline = time.time() + 240
    for line in proc.stdout:
        seen.append(line)
        if '"event": "train"' in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=240)
    events = [json.loads(x)["event"] for x in (seen + rest.splitlines()) if x.startswith("{")]
    assert proc.returncode == 0, "".join(seen[-20:]) + rest[-2000:]
    assert "train" in events and "stop_requested" in events and events[-1] == "done", events
    for name in ("ckpt_full.safetensors", "ckpt_fp16.safetensors", "generator_fp16.safetensors", "log.jsonl"):
        assert (out / name).is_file(), name


def _conditioned_generator(faces: np.ndarray, **fields) -> tuple[InpaintGenerator, tuple, dict]:
    """A small v2 network with the shipped mask settings, 4 shape modes and ``fields`` (part
    models, eye opening), its shape and part models fitted on ``faces`` (N, 68, 2) as the trainer
    does; returns (network, shape model, part models)."""
    from identitydp.training.inpaint import fit_part_model, fit_shape_model

    cfg = InpaintConfig(size=128, **SMALL, mask_lift=1.0, mask_grow=0.06, mask_convex=True, shape_components=4, **fields)
    g = InpaintGenerator(cfg)
    models = {"shape": fit_shape_model(faces, 128, 4)}
    models.update({part: fit_part_model(faces, 128, part, count) for part, count in cfg.part_components.items() if count})
    for name, (mean, basis) in models.items():
        getattr(g, f"{name}_mean").copy_(torch.from_numpy(mean))
        getattr(g, f"{name}_basis").copy_(torch.from_numpy(basis))
    shape = models.pop("shape")
    return g, shape, models


def test_mouth_model_keeps_the_mouths_own_opening(real_crop, tmp_path) -> None:
    """With ``mouth_components`` the sketch's mouth is the face's own mouth shape on the leading
    modes of a public mouth model, placed where the shape modes put the mouth: an opening mouth
    opens in the sketch, while the rest of the face (and the mouth's position) stays on the shape
    modes. The mouth model ships in the weights, is read by the anonymizer, and a file that
    declares one but lacks it is refused."""
    from identitydp.errors import WeightsError
    from identitydp.generate.anonymizer import IdentityDPAnonymizer
    from identitydp.generate.checkpoint import export_generator, load_generator
    from identitydp.generate.inpaint_conditions import MOUTH, project_shape
    from identitydp.training.inpaint import _load_matching

    crop, lm68 = real_crop
    with pytest.raises(ValueError, match="mouth_components"):
        InpaintConfig(size=128, **SMALL, mouth_components=2)
    rng = np.random.default_rng(0)
    faces = lm68[None] + rng.normal(0, 1.5, (300, 68, 2))
    opening = rng.uniform(0, 8, 300)
    lower_lip = [55, 56, 57, 58, 59, 64, 65, 66, 67]
    faces[:, lower_lip, 1] += opening[:, None]  # the jaw drops: lower lip down by 0–8 px
    g, shape, parts = _conditioned_generator(faces, mouth_components=3)
    cfg, mouth = g.cfg, parts["mouth"]
    assert np.allclose(mouth[1] @ mouth[1].T, np.eye(3), atol=1e-9)

    def gap(points: np.ndarray) -> float:  # inner lips: bottom (66) below top (62), px
        return float(points[66, 1] - points[62, 1])

    closed, wide = faces[np.argmin(opening)], faces[np.argmax(opening)]
    for face, drop in ((closed, opening.min()), (wide, opening.max())):
        geometry = g.sketch_geometry(face)
        on_shape = project_shape(face, *shape, 128)
        assert np.allclose(geometry[:48], on_shape[:48])  # everything but the mouth: shape modes only
        assert np.allclose(geometry[MOUTH].mean(0), on_shape[MOUTH].mean(0))  # placed by the shape modes
        assert abs(gap(geometry) - (gap(lm68) + drop)) < 1.5  # the mouth's own opening, without the jitter
    assert gap(g.sketch_geometry(wide)) - gap(g.sketch_geometry(closed)) > 5.0

    path = tmp_path / "g.safetensors"
    export_generator(g, torch.zeros(128), path, {"margin": 0.25})
    loaded, _, _ = load_generator(path)
    assert loaded.cfg.mouth_components == 3 and np.allclose(loaded.sketch_geometry(wide), g.sketch_geometry(wide))
    anonymizer = IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=path, shape_modes=4)
    assert anonymizer._part_models["mouth"][1].shape == (2, 40) and anonymizer.describe()["mouth_modes"] == 2  # the default
    assert anonymizer.describe()["brow_modes"] == 0
    assert IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=path, mouth_modes=3)._part_models["mouth"][1].shape == (3, 40)
    with pytest.raises(ValueError, match="mouth_modes must be an integer from 1 to 3"):
        IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=path, mouth_modes=4)
    registered = IdentityDPAnonymizer(epsilon=1.0, seed=0)  # v2zw2 (since 2026-12-08): a 4-mode mouth model
    assert registered.describe()["mouth_modes"] == 2 and registered._part_models["mouth"][1].shape == (2, 40)
    with pytest.raises(ValueError, match="no brows model"):
        IdentityDPAnonymizer(epsilon=1.0, seed=0, brow_modes=1)  # the registered renderer has none
    # Starting a mouth-model network from weights without one: the shape model loads, the mouth
    # model is fitted by the trainer; from one with it, both load.
    plain = InpaintGenerator(InpaintConfig(size=128, **SMALL, mask_lift=1.0, mask_grow=0.06, mask_convex=True,
                                           shape_components=4))
    assert _load_matching(InpaintGenerator(cfg), plain.state_dict()) == {"shape"}
    assert _load_matching(InpaintGenerator(cfg), g.state_dict()) == {"shape", "mouth"}

    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), "np") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("mouth_")}
        meta = fh.metadata()
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=meta)
    with pytest.raises(WeightsError, match="mouth model"):
        IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=broken)


def test_brow_model_keeps_raised_brows(real_crop, tmp_path) -> None:
    """With ``brow_components`` the sketch's brows are the face's own brows *relative to its eyes*
    on a public brow model's modes, placed at the shape-projected eyes: raised brows (surprise)
    reach the renderer, the rest of the face stays on the shape modes, and the model ships in the
    weights."""
    from identitydp.generate.anonymizer import IdentityDPAnonymizer
    from identitydp.generate.checkpoint import export_generator
    from identitydp.generate.inpaint_conditions import BROWS, EYES, project_shape
    from identitydp.training.inpaint import _load_matching

    _, lm68 = real_crop
    with pytest.raises(ValueError, match="brow_components"):
        InpaintConfig(size=128, **SMALL, brow_components=1)
    rng = np.random.default_rng(1)
    faces = lm68[None] + rng.normal(0, 1.5, (300, 68, 2))
    raise_px = rng.uniform(0, 6, 300)
    faces[:, BROWS, 1] -= raise_px[:, None]  # brows up (image y grows downwards)
    g, shape, parts = _conditioned_generator(faces, brow_components=2)
    cfg = g.cfg
    assert parts["brows"][1].shape == (2, 20)

    def brow_height(points: np.ndarray) -> float:  # eyes' centroid below the brows' centroid, px
        return float(points[EYES, 1].mean() - points[BROWS, 1].mean())

    low, high = faces[np.argmin(raise_px)], faces[np.argmax(raise_px)]
    for face, lift in ((low, raise_px.min()), (high, raise_px.max())):
        geometry = g.sketch_geometry(face)
        on_shape = project_shape(face, *shape, 128)
        assert np.allclose(geometry[:17], on_shape[:17]) and np.allclose(geometry[27:], on_shape[27:])
        assert abs(brow_height(geometry) - (brow_height(lm68) + lift)) < 1.5  # own lift, without the jitter
    assert brow_height(g.sketch_geometry(high)) - brow_height(g.sketch_geometry(low)) > 4.0

    path = tmp_path / "g.safetensors"
    export_generator(g, torch.zeros(128), path, {"margin": 0.25})
    anonymizer = IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=path)
    assert anonymizer.describe()["brow_modes"] == 2 and anonymizer.describe()["mouth_modes"] == 0
    assert np.allclose(anonymizer._part_models["brows"][1], g.brows_basis.numpy())
    assert IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=path, brow_modes=1)._part_models["brows"][1].shape == (1, 20)
    with pytest.raises(ValueError, match="brow_modes must be an integer from 1 to 2"):
        IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=path, brow_modes=3)
    # A brow-model network started from one with the shape model only: the trainer fits the brows.
    plain = InpaintGenerator(InpaintConfig(size=128, **SMALL, mask_lift=1.0, mask_grow=0.06, mask_convex=True,
                                           shape_components=4))
    assert _load_matching(InpaintGenerator(cfg), plain.state_dict()) == {"shape"}
    assert _load_matching(InpaintGenerator(cfg), g.state_dict()) == {"shape", "brows"}


def test_eye_opening_reaches_the_sketch(real_crop, tmp_path) -> None:
    """With ``eye_opening`` the sketch's eyes (on the shape modes) are opened or closed to the
    face's own opening — a blink stays a blink — while corners, eye size and the rest of the face
    stay on the shape modes; the renderer's config carries it to the anonymizer."""
    from identitydp.generate.anonymizer import IdentityDPAnonymizer
    from identitydp.generate.checkpoint import export_generator
    from identitydp.generate.inpaint_conditions import eye_opening_of, project_shape, with_eye_opening

    _, lm68 = real_crop
    with pytest.raises(ValueError, match="eye_opening"):
        InpaintConfig(size=128, **SMALL, eye_opening=True)
    own = eye_opening_of(lm68)
    assert 0.05 < own < 0.4  # a real photo's open eyes
    assert eye_opening_of(with_eye_opening(lm68, 0.5 * own)) == pytest.approx(0.5 * own, rel=1e-6)
    rng = np.random.default_rng(2)
    faces = lm68[None] + rng.normal(0, 1.0, (200, 68, 2))
    g, shape, _ = _conditioned_generator(faces, eye_opening=True)
    blink = with_eye_opening(lm68, 0.02)  # nearly shut
    for face in (lm68, blink):
        geometry = g.sketch_geometry(face)
        on_shape = project_shape(face, *shape, 128)
        assert eye_opening_of(geometry) == pytest.approx(eye_opening_of(face), rel=1e-6)
        assert np.allclose(geometry[:36], on_shape[:36]) and np.allclose(geometry[48:], on_shape[48:])
        assert np.allclose(geometry[[36, 39, 42, 45]], on_shape[[36, 39, 42, 45]])  # the corners
    path = tmp_path / "g.safetensors"
    export_generator(g, torch.zeros(128), path, {"margin": 0.25})
    assert IdentityDPAnonymizer(epsilon=1.0, seed=0, weights=path).describe()["eye_opening"] is True
    assert IdentityDPAnonymizer(epsilon=1.0, seed=0).describe()["eye_opening"] is False  # the registered renderer
