"""IdentityDP renderer v2: an inpainting generator that never sees the original inner face.

The v1 renderer (:mod:`identitydp.generate.networks`, FaceShifter's AEI-Net) encodes the whole
original crop into its attributes, and it copies the original identity through them (the
"double exposure"). v2 follows DeepPrivacy's masked-face input instead and takes the identity
only from the (noisy) identity vector, as IdentityDP prescribes:

* the **inner face** (the hull of the 68 landmarks, raised over the forehead: see
  :func:`inner_face_mask`) is erased from the input before the network sees it;
* what the output must keep comes in as separate channels: the **context** around the face (hair,
  ears, background, neck: the crop outside the mask), the **pose and expression geometry** as a
  line drawing of the 68 landmarks (:func:`landmark_sketch`, five channels: jaw, brows, nose,
  eyes, mouth), and **coarse lighting/colour** (:func:`coarse_colour`: the inner face averaged
  over a 4×4 grid of the crop, i.e. about 2×2 cells over the face);
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
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

#: Channels of the generator's input: masked RGB (3), mask (1), coarse colour (3), sketch (5).
SKETCH_CHANNELS = 5
INPUT_CHANNELS = 3 + 1 + 3 + SKETCH_CHANNELS

# 68-point (iBUG) groups drawn as polylines, one channel per group: (channel, points, closed).
_SKETCH_GROUPS: list[tuple[int, list[int], bool]] = [
    (0, list(range(0, 17)), False),  # jaw
    (1, list(range(17, 22)), False),  # brows
    (1, list(range(22, 27)), False),
    (2, list(range(27, 31)), False),  # nose bridge
    (2, list(range(31, 36)), False),  # nostrils
    (3, list(range(36, 42)), True),  # eyes
    (3, list(range(42, 48)), True),
    (4, list(range(48, 60)), True),  # outer lips
    (4, list(range(60, 68)), True),  # inner lips
]

#: Mirror permutation of the 68-point markup (index i of the mirrored face is point FLIP68[i]).
FLIP68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + list(range(27, 31)) + list(range(35, 30, -1))
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
)


def flip_landmarks68(points: np.ndarray, size: int) -> np.ndarray:
    """(..., 68, 2) landmarks of a crop → those of its horizontal mirror (pixel centres at +0.5)."""
    pts = np.asarray(points, np.float64)[..., FLIP68, :].copy()
    pts[..., 0] = size - pts[..., 0]
    return pts


@dataclass
class InpaintConfig:
    """Architecture of the v2 renderer, stored with every checkpoint.

    Attributes:
        size: crop side in pixels (power of two, ≥ 64).
        id_dim: identity vector dimension.
        w_dim: width of the mapping network's output (the style vector).
        channels: encoder/decoder channels from full resolution down to 4×4; ``log2(size) − 1``
            entries are used (the list is truncated).
        mapping_layers: depth of the identity mapping MLP.
        disc_channels: discriminator channels per level.
        disc_scales: PatchGAN scales.
        mask_lift: how far above the brows the repainted region reaches, in mouth-to-eye
            distances (see :func:`inner_face_polygon`).
        mask_grow: how much the jaw line is pushed out from the face centre (0.1 = 10 %).
        mask_convex: repaint the convex hull of that polygon (its shape then says less about
            the face outline).
        shape_components: 0: the sketch draws the face's own 68 landmarks; k > 0: it draws them
            projected onto the k leading modes of a public shape model (pose and expression),
            so the fine shape of eyes, nose, mouth and jaw — identity — is not given to the
            renderer. The model (mean + modes, fitted on training faces) is part of the weights.
        colour_grid: side of the coarse-colour grid over the crop.
    """

    size: int = 128
    id_dim: int = 128
    w_dim: int = 256
    channels: list[int] = field(default_factory=lambda: [24, 48, 96, 192, 256, 256, 256])
    mapping_layers: int = 3
    disc_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    disc_scales: int = 2
    mask_lift: float = 0.55
    mask_grow: float = 0.0
    mask_convex: bool = False
    shape_components: int = 0
    colour_grid: int = 4

    def __post_init__(self) -> None:
        if self.size < 64 or self.size & (self.size - 1):
            raise ValueError(f"crop size must be a power of two >= 64, got {self.size}")
        if len(self.channels) < self.levels:
            raise ValueError(f"need {self.levels} channel entries for size {self.size}, got {len(self.channels)}")

    @property
    def levels(self) -> int:
        """Resolutions S, S/2, …, 4."""
        return int(math.log2(self.size)) - 1

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- conditioning inputs
def inner_face_polygon(landmarks68: np.ndarray, lift: float = 0.55, grow: float = 0.0, convex: bool = False) -> np.ndarray:
    """The region the renderer repaints, as a polygon: the jaw line (pushed out from the face
    centre by ``grow``) plus the brows raised by ``lift`` mouth-to-eye distances, so that the
    brow ridge and the forehead are repainted too (they carry identity); with ``convex`` its
    convex hull.

    Args:
        landmarks68: (68, 2) pixel coordinates.

    Returns:
        (K, 2) float64 polygon in image coordinates.
    """
    import cv2

    lm = np.asarray(landmarks68, np.float64)
    eyes = lm[36:48].mean(0)
    mouth = lm[48:68].mean(0)
    up = eyes - mouth  # points up the face, whatever the roll
    centre = (eyes + mouth) / 2
    jaw = centre + (lm[0:17] - centre) * (1.0 + grow)
    brows = centre + (lm[17:27][::-1] + lift * up - centre) * (1.0 + grow)
    poly = np.concatenate([jaw, brows])
    if convex:
        poly = cv2.convexHull(poly.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    return poly


def inner_face_mask(landmarks68: np.ndarray, size: int, feather: float = 0.04, dilate: float = 0.03,
                    lift: float = 0.55, grow: float = 0.0, convex: bool = False) -> np.ndarray:
    """Soft (S, S) float32 mask in [0, 1] of the region the renderer repaints.

    The polygon of :func:`inner_face_polygon`, grown by ``dilate`` of the crop and feathered over
    ``feather`` of the crop outside that (so the hard edge of the landmark hull is inside the
    repainted area and the blend ramps down on the context).
    """
    poly = inner_face_polygon(landmarks68, lift=lift, grow=grow, convex=convex)
    scale = max(1, 512 // size)  # supersampled drawing, anti-aliased by the area resize
    canvas = np.zeros((size * scale, size * scale), np.uint8)
    pts = np.round((poly - 0.5) * scale).astype(np.int32)
    import cv2

    cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_AA)
    hard = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    grow_px = max(1, int(round(dilate * size)))
    inside = (hard > 0.5).astype(np.uint8)
    dist_out = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)  # px from the region, outside it
    ramp = max(feather * size, 1.0)
    soft = np.clip(1.0 - (dist_out - grow_px) / ramp, 0.0, 1.0)
    return np.maximum(soft, hard).astype(np.float32)


def mask_for(cfg: "InpaintConfig", landmarks68: np.ndarray) -> np.ndarray:
    """The repaint mask a renderer with config ``cfg`` was trained with, for (68, 2) landmarks."""
    return inner_face_mask(landmarks68, cfg.size, lift=cfg.mask_lift, grow=cfg.mask_grow, convex=cfg.mask_convex)


def landmark_sketch(landmarks68: np.ndarray, size: int, thickness: float = 0.012) -> np.ndarray:
    """Line drawing of the face geometry: (SKETCH_CHANNELS, S, S) float32 in [0, 1].

    Channels: jaw, brows, nose, eyes, lips; anti-aliased polylines ``thickness`` of the crop wide
    and slightly blurred, so that a sub-pixel change of a landmark changes the input smoothly.
    """
    import cv2

    lm = np.asarray(landmarks68, np.float64)
    scale = max(1, 512 // size)
    out = np.zeros((SKETCH_CHANNELS, size, size), np.float32)
    width = max(1, int(round(thickness * size * scale)))
    for ch in range(SKETCH_CHANNELS):
        canvas = np.zeros((size * scale, size * scale), np.uint8)
        for c, idx, closed in _SKETCH_GROUPS:
            if c != ch:
                continue
            pts = np.round((lm[idx] - 0.5) * scale).astype(np.int32)
            cv2.polylines(canvas, [pts], closed, 255, thickness=width, lineType=cv2.LINE_AA)
        small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        out[ch] = cv2.GaussianBlur(small, (0, 0), 0.6 * size / 128)
    return np.clip(out * 1.5, 0.0, 1.0)


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

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n = torch.randn((x.shape[0], 1, x.shape[2], x.shape[3]), device=x.device, dtype=x.dtype, generator=generator)
        return x + self.strength * n


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
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        h = F.leaky_relu(self.noise1(self.conv1(torch.cat([h, skip], 1), w), generator), 0.2)
        h = F.leaky_relu(self.noise2(self.conv2(h, w), generator), 0.2)
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
        model (see :class:`InpaintConfig`); else the landmarks themselves.
        """
        lm = np.asarray(landmarks68, np.float64)
        if self.cfg.shape_components <= 0:
            return lm
        scale = self.cfg.size / 128.0
        mean = self.shape_mean.detach().cpu().numpy()
        basis = self.shape_basis.detach().cpu().numpy()
        flat = lm.reshape(-1) / scale - mean
        return ((mean + basis.T @ (basis @ flat)) * scale).reshape(68, 2)

    def forward(self, images: torch.Tensor, mask: torch.Tensor, sketch: torch.Tensor, z: torch.Tensor,
                generator: torch.Generator | None = None, truncation: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``truncation`` ψ < 1 pulls the style towards the training identities' mean style,
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
            h, out = block(h, skip, w, generator)
            rgb = out if rgb is None else F.interpolate(rgb, scale_factor=2.0, mode="bilinear", align_corners=False) + out
        raw = torch.tanh(rgb)
        composite = mask * raw + (1.0 - mask) * images
        return composite, raw


def _sn(module: nn.Module) -> nn.Module:
    return nn.utils.spectral_norm(module)


class MaskedPatchDiscriminator(nn.Module):
    """PatchGAN on (image, mask) at full and half resolution: the mask tells it where to look.

    Forward: (N, 3, S, S) images, (N, 1, S, S) mask → list of (N, 1, h, w) logits.
    """

    def __init__(self, cfg: InpaintConfig) -> None:
        super().__init__()
        self.scales = nn.ModuleList()
        for _ in range(cfg.disc_scales):
            layers: list[nn.Module] = []
            cin = 4
            for i, c in enumerate(cfg.disc_channels):
                stride = 2 if i < len(cfg.disc_channels) - 1 else 1
                layers += [_sn(nn.Conv2d(cin, c, 4, stride, 1)), nn.LeakyReLU(0.2, inplace=True)]
                cin = c
            layers.append(_sn(nn.Conv2d(cin, 1, 3, 1, 1)))
            self.scales.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        h = torch.cat([x, mask * 2 - 1], 1)
        outs = []
        for i, d in enumerate(self.scales):
            if i:
                h = F.avg_pool2d(h, 3, 2, 1, count_include_pad=False)
            outs.append(d(h))
        return outs
