"""IdentityDP renderer v2: an inpainting generator that never sees the original inner face.

The v1 renderer (:mod:`identitydp.generate.networks`, FaceShifter's AEI-Net) encodes the whole
original crop into its attributes, and it copies the original identity through them (the
"double exposure"). v2 follows DeepPrivacy's masked-face input instead and takes the identity
only from the (noisy) identity vector, as IdentityDP prescribes:

* the **inner face** (the hull of the 68 landmarks, raised over the forehead: see
  :func:`inner_face_mask`) is erased from the input before the network sees it;
* what the output must keep comes in as separate channels: the **context** around the face (hair,
  ears, background, neck: the crop outside the mask), the **pose geometry** as a
  line drawing of the 68 landmarks (at inference by default their 2 leading public shape modes:
  head pose and face length, not the expression) (:func:`landmark_sketch`, five channels: jaw, brows, nose,
  eyes, mouth), and **coarse lighting/colour** (:func:`coarse_colour`: the inner face averaged
  over a G×G grid of the crop, ``InpaintConfig.colour_grid``: 1 — one mean colour — in the shipped
  weights since v2z, 2026-12-07; 4 before v2x, when those cells were the renderer input that
  carried the most of what an independent judge saw at ε = 1, docs/results/leak-attribution);
* the **identity** ``z`` (the centred unit dlib descriptor, the DP release) drives every decoder
  level through a mapping network and StyleGAN2 weight modulation/demodulation, and per-pixel
  noise inputs give the renderer its own fine texture (skin, hair) — no fine detail comes from
  the original;
* the output is composited: original pixels outside the mask, the rendering inside
  (:meth:`InpaintGenerator.forward` returns both).

Images are float tensors in [-1, 1], (N, 3, S, S) RGB, S a power of two ≥ 64 (128 on the CPU,
256 on a GPU). ``z`` is (N, D) with D = 128.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .inpaint_conditions import (  # noqa: F401 - re-exported: the network's conditioning
    _SKETCH_GROUPS,
    FLIP68,
    INPUT_CHANNELS,
    MOUTH,
    PARTS,
    SKETCH_CHANNELS,
    InpaintConfig,
    flip_landmarks68,
    inner_face_mask,
    inner_face_polygon,
    landmark_sketch,
    mask_for,
    part_size,
    project_part,
    project_shape,
    sketch_geometry,
)


def coarse_colour(images: torch.Tensor, mask: torch.Tensor, grid: int = 4) -> torch.Tensor:
    """Mask-weighted mean colour of the inner face on a ``grid``×``grid`` grid of the crop,
    spread back over the mask: the lighting and skin tone the rendering must keep.

    Args:
        images: (N, 3, S, S) in [-1, 1]; mask: (N, 1, S, S) in [0, 1].

    Returns:
        (N, 3, S, S): the coarse colour inside the mask, 0 outside.
    """
    s = images.shape[-1]
    num = F.adaptive_avg_pool2d(images * mask, grid)
    den = F.adaptive_avg_pool2d(mask, grid)
    # Cells with little face take the face's overall mean colour.
    overall = (images * mask).sum((2, 3), keepdim=True) / mask.sum((2, 3), keepdim=True).clamp_min(1e-6)
    w = (den / (den + 0.05)).clamp(0, 1)
    cells = w * num / den.clamp_min(1e-6) + (1 - w) * overall
    up = F.interpolate(cells, size=(s, s), mode="bilinear", align_corners=False)
    return up * mask


def generator_input(images: torch.Tensor, mask: torch.Tensor, sketch: torch.Tensor, grid: int = 4) -> torch.Tensor:
    """(N, INPUT_CHANNELS, S, S): masked RGB, mask, coarse colour, landmark sketch.

    ``images`` (N, 3, S, S) in [-1, 1], ``mask`` (N, 1, S, S) in [0, 1] (1 = repaint),
    ``sketch`` (N, 5, S, S) in [0, 1]. Where the mask is 1 nothing of the original reaches the
    network but the coarse colour.
    """
    keep = 1.0 - mask
    return torch.cat([images * keep, mask, coarse_colour(images, mask, grid), sketch], dim=1)


# --------------------------------------------------------------------------- network
class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (StyleGAN), ``lr_mul`` for the mapping net."""

    def __init__(self, cin: int, cout: int, bias_init: float = 0.0, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(cin)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class MappingNetwork(nn.Module):
    """(N, id_dim) unit identity → (N, w_dim) style."""

    def __init__(self, id_dim: int, w_dim: int, layers: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        cin = id_dim
        for _ in range(layers):
            mods += [EqualLinear(cin, w_dim, lr_mul=0.1), nn.LeakyReLU(0.2)]
            cin = w_dim
        self.net = nn.Sequential(*mods)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # Identities are unit vectors; √d restores the unit-variance inputs the layers expect.
        return self.net(z * math.sqrt(z.shape[1]))


class ModConv(nn.Module):
    """3×3 convolution modulated by the style and demodulated (StyleGAN2), computed as
    input scaling → shared conv → output scaling, so no per-sample weights are built."""

    def __init__(self, cin: int, cout: int, w_dim: int, kernel: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(cin * kernel * kernel)
        self.pad = kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.affine(w)  # (N, cin)
        weight = self.weight * self.scale
        y = F.conv2d(x * s[:, :, None, None], weight, padding=self.pad)
        # Demodulation: 1 / ||W · s|| per (sample, output channel).
        d = torch.rsqrt((s * s) @ (weight * weight).sum((2, 3)).t() + 1e-8)  # (N, cout)
        return y * d[:, :, None, None] + self.bias[None, :, None, None]


class NoiseInjection(nn.Module):
    """Per-pixel Gaussian noise with a learned per-channel strength (StyleGAN): the renderer's own
    source of fine, stochastic texture."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, ch, 1, 1))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise``: the (N, 1, H, W) standard normal map to use (drawn here when None)."""
        if noise is None:
            noise = torch.randn((x.shape[0], 1, x.shape[2], x.shape[3]), device=x.device, dtype=x.dtype, generator=generator)
        return x + self.strength * noise.to(x.dtype)


class EncoderBlock(nn.Module):
    """conv3×3 stride 2 → LReLU → conv3×3 → LReLU (halves the resolution)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(cin, cout, 3, 2, 1)
        self.conv = nn.Conv2d(cout, cout, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.down(x), 0.2)
        return F.leaky_relu(self.conv(h), 0.2)


class DecoderBlock(nn.Module):
    """Upsample ×2 → concat the encoder's skip (context only) → two style-modulated convs with
    noise, → LReLU; a 1×1 to-RGB skip output (StyleGAN2's output skips)."""

    def __init__(self, cin: int, skip: int, cout: int, w_dim: int) -> None:
        super().__init__()
        self.conv1 = ModConv(cin + skip, cout, w_dim)
        self.noise1 = NoiseInjection(cout)
        self.conv2 = ModConv(cout, cout, w_dim)
        self.noise2 = NoiseInjection(cout)
        self.to_rgb = nn.Conv2d(cout, 3, 1)

    def forward(self, h: torch.Tensor, skip: torch.Tensor, w: torch.Tensor,
                generator: torch.Generator | None = None,
                noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n1, n2 = noise if noise is not None else (None, None)
        h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        h = F.leaky_relu(self.noise1(self.conv1(torch.cat([h, skip], 1), w), generator, n1), 0.2)
        h = F.leaky_relu(self.noise2(self.conv2(h, w), generator, n2), 0.2)
        return h, self.to_rgb(h)


class InpaintGenerator(nn.Module):
    """The v2 renderer.

    ``forward(images, mask, sketch, z)`` → ``(composite, raw)``, both (N, 3, S, S) in [-1, 1]:
    ``raw`` is the network's whole rendering, ``composite`` keeps the original outside the mask.
    ``images`` are the original crops; their pixels inside ``mask`` never reach the network
    (see :func:`generator_input`), so the inner face cannot be copied.
    """

    def __init__(self, cfg: InpaintConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels[: cfg.levels]  # resolutions S, S/2, ..., 4
        self.mapping = MappingNetwork(cfg.id_dim, cfg.w_dim, cfg.mapping_layers)
        self.stem = nn.Conv2d(INPUT_CHANNELS, ch[0], 3, 1, 1)
        self.encoder = nn.ModuleList(EncoderBlock(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        # Identity at the bottleneck too: the whole face layout starts from it.
        self.bottleneck_id = EqualLinear(cfg.w_dim, ch[-1] * 16)
        self.bottleneck = ModConv(ch[-1] * 2, ch[-1], cfg.w_dim)
        self.decoder = nn.ModuleList(
            DecoderBlock(ch[i + 1], ch[i], ch[i], cfg.w_dim) for i in range(len(ch) - 2, -1, -1)
        )
        if cfg.shape_components > 0:
            # Public shape model, in 128-px crop coordinates (set by the trainer, shipped in the weights).
            self.register_buffer("shape_mean", torch.zeros(136, dtype=torch.float64))
            self.register_buffer("shape_basis", torch.zeros(cfg.shape_components, 136, dtype=torch.float64))
        for part, count in cfg.part_components.items():
            if count > 0:
                # Public model of the part's shape (InpaintConfig.mouth_components, …), 128-px units;
                # the mouth's keeps the names ``mouth_mean`` / ``mouth_basis`` of the files before.
                n = part_size(part)
                self.register_buffer(f"{part}_mean", torch.zeros(n, dtype=torch.float64))
                self.register_buffer(f"{part}_basis", torch.zeros(count, n, dtype=torch.float64))
        # (w_dim,) mean style of the training identities, for the truncation trick (see forward);
        # set by the trainer at export and by the loader, not a learned or trained-state tensor.
        self.style_mean: torch.Tensor | None = None

    @torch.no_grad()
    def mean_style(self, identities: torch.Tensor, batch: int = 2048) -> torch.Tensor:
        """(N, id_dim) centred unit identities → (w_dim,) float32 mean of their styles."""
        total = None
        for i in range(0, identities.shape[0], batch):
            w = self.mapping(identities[i : i + batch].float()).double().sum(0)
            total = w if total is None else total + w
        return (total / identities.shape[0]).float()

    def sketch_geometry(self, landmarks68: np.ndarray) -> np.ndarray:
        """The landmarks the sketch is drawn from: (68, 2) → (68, 2), crop pixels at this size.

        With ``shape_components`` = k > 0, the projection onto the k leading modes of the shape
        model, with ``mouth_components`` (``brow_components``) = m > 0 that
        part's own shape on m modes of its model, with ``eye_opening`` the eyes opened to the face's
        own opening (see :class:`InpaintConfig`); else the landmarks themselves.
        """
        if self.cfg.shape_components <= 0:
            return np.asarray(landmarks68, np.float64)
        shape = (self.shape_mean.detach().cpu().numpy(), self.shape_basis.detach().cpu().numpy())
        return sketch_geometry(landmarks68, self.cfg.size, shape, self.part_models(), self.cfg.eye_opening)

    def part_models(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Part name → (mean (2P,), basis (m, 2P)) float64, for each part model this network has."""
        return {part: (getattr(self, f"{part}_mean").detach().cpu().numpy(),
                       getattr(self, f"{part}_basis").detach().cpu().numpy())
                for part, count in self.cfg.part_components.items() if count > 0}

    def noise_sides(self) -> list[int]:
        """Side of each per-pixel noise map, in the order :meth:`forward`'s ``noise`` takes them."""
        return self.cfg.noise_sides

    def forward(self, images: torch.Tensor, mask: torch.Tensor, sketch: torch.Tensor, z: torch.Tensor,
                generator: torch.Generator | None = None, truncation: float = 1.0,
                noise: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``noise``: the renderer's texture noise, (N, 1, s, s) standard normal maps with the
        sides :meth:`noise_sides` lists (drawn from ``generator`` when None).

        ``truncation`` ψ < 1 pulls the style towards the training identities' mean style,
        w ← w̄ + ψ (w − w̄) (StyleGAN's truncation trick): rare styles, where the renderer paints
        blotchy texture, move towards common ones. A deterministic function of the identity
        vector, so after the DP release it is post-processing. Needs :attr:`style_mean`."""
        w = self.mapping(z)
        if truncation != 1.0:
            if self.style_mean is None:
                raise ValueError("truncation needs the style mean (style_mean) these weights were exported without")
            mean = self.style_mean.to(w)
            w = mean + truncation * (w - mean)
        h = F.leaky_relu(self.stem(generator_input(images, mask, sketch, self.cfg.colour_grid)), 0.2)
        skips = [h]
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        n, c = h.shape[:2]
        side = h.shape[-1]
        ident = self.bottleneck_id(w).view(n, c, 4, 4)
        if side != 4:
            ident = F.interpolate(ident, size=(side, side), mode="bilinear", align_corners=False)
        h = F.leaky_relu(self.bottleneck(torch.cat([h, ident], 1), w), 0.2)
        rgb = None
        for i, block in enumerate(self.decoder):
            skip = skips[len(skips) - 2 - i]
            h, out = block(h, skip, w, generator, None if noise is None else (noise[2 * i], noise[2 * i + 1]))
            rgb = out if rgb is None else F.interpolate(rgb, scale_factor=2.0, mode="bilinear", align_corners=False) + out
        raw = torch.tanh(rgb)
        composite = mask * raw + (1.0 - mask) * images
        return composite, raw


def _sn(module: nn.Module) -> nn.Module:
    return nn.utils.spectral_norm(module)


class MaskedPatchDiscriminator(nn.Module):
    """PatchGAN on (image, mask) at full and half resolution: the mask tells it where to look.

    With ``sketch_channels`` > 0 it also reads the landmark sketch the renderer was given
    (conditional, as in pix2pix), so that it can judge whether the face follows the geometry
    (mouth open or closed, gaze, pose) as well as whether it looks real; trained with mismatched
    (photo, another face's sketch) pairs as fakes it has to (a matching-aware discriminator).

    Forward: (N, 3, S, S) images, (N, 1, S, S) mask, optionally (N, sketch_channels, S, S) sketch
    in [0, 1] → list of (N, 1, h, w) logits.
    """

    def __init__(self, cfg: InpaintConfig, sketch_channels: int = 0) -> None:
        super().__init__()
        self.sketch_channels = sketch_channels
        self.scales = nn.ModuleList()
        for _ in range(cfg.disc_scales):
            layers: list[nn.Module] = []
            cin = 4 + sketch_channels
            for i, c in enumerate(cfg.disc_channels):
                stride = 2 if i < len(cfg.disc_channels) - 1 else 1
                layers += [_sn(nn.Conv2d(cin, c, 4, stride, 1)), nn.LeakyReLU(0.2, inplace=True)]
                cin = c
            layers.append(_sn(nn.Conv2d(cin, 1, 3, 1, 1)))
            self.scales.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, sketch: torch.Tensor | None = None) -> list[torch.Tensor]:
        if (sketch is None) != (self.sketch_channels == 0):
            raise ValueError(f"this discriminator reads {self.sketch_channels} sketch channels; "
                             f"got {'none' if sketch is None else sketch.shape[1]}")
        parts = [x, mask * 2 - 1] + ([] if sketch is None else [sketch * 2 - 1])
        h = torch.cat(parts, 1)
        outs = []
        for i, d in enumerate(self.scales):
            if i:
                h = F.avg_pool2d(h, 3, 2, 1, count_include_pad=False)
            outs.append(d(h))
        return outs
