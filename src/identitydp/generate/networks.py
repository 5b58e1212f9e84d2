"""The IdentityDP reconstruction networks (after FaceShifter's AEI-Net, Li et al. 2020).

* :class:`AttributeEncoder` — a U-Net; its decoder feature maps ``A_k`` (coarse 4×4 to full
  resolution) are the multi-level attributes of the target crop (pose, expression, lighting, hair,
  background).
* :class:`AADGenerator` — starts from the identity vector and, at every level, mixes the
  instance-normalised activations modulated by the identity (γ, β from an FC layer on ``z``) and by
  the attributes (γ, β from a conv on ``A_k``) through a learned attention mask ``M``:
  ``h = (1 − M)·A + M·I``.
* :class:`MultiScalePatchDiscriminator` — hinge PatchGAN at full and half resolution, spectral norm.

Images are float tensors in [-1, 1], (N, 3, S, S) RGB, S a power of two ≥ 32 (128 default, 64 for
CPU experiments). The identity ``z`` is (N, D) (D = 128): the dlib descriptor centred by the
training-set mean and renormalised to unit length (see :mod:`identitydp.generate.identity`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class NetConfig:
    """Architecture hyper-parameters, stored with every checkpoint.

    Attributes:
        size: crop side in pixels (power of two, ≥ 32).
        id_dim: identity vector dimension.
        enc_channels: attribute-encoder channels per downsampling level (full res → 4×4); the list
            is truncated to ``log2(size) − 2`` levels.
        gen_channels: generator channels per level, coarse (4×4) to fine (full res);
            ``log2(size) − 1`` entries are used.
        disc_channels: discriminator channels per level.
        disc_scales: number of PatchGAN scales.
    """

    size: int = 128
    id_dim: int = 128
    enc_channels: list[int] = field(default_factory=lambda: [32, 64, 96, 128, 192])
    gen_channels: list[int] = field(default_factory=lambda: [256, 192, 128, 96, 64, 32])
    disc_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    disc_scales: int = 2

    def __post_init__(self) -> None:
        if self.size < 32 or self.size & (self.size - 1):
            raise ValueError(f"crop size must be a power of two >= 32, got {self.size}")
        if len(self.enc_channels) < self.levels - 1 or len(self.gen_channels) < self.levels:
            raise ValueError(f"need {self.levels - 1} encoder and {self.levels} generator channel entries for size {self.size}")

    @property
    def levels(self) -> int:
        """Number of attribute levels: 4×4, 8×8, …, size×size."""
        return int(math.log2(self.size)) - 1

    def to_dict(self) -> dict:
        return asdict(self)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True))


class AttributeEncoder(nn.Module):
    """U-Net whose decoder outputs are the multi-level attributes.

    Forward: (N, 3, S, S) in [-1, 1] → list of ``levels`` maps, coarse to fine:
    ``A[0]`` (N, c0, 4, 4), ``A[k]`` (N, c_k, 4·2^k, 4·2^k), the last one at full resolution.
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        n_down = cfg.levels - 1  # full res → 4×4
        ch = cfg.enc_channels[:n_down]
        self.downs = nn.ModuleList()
        cin = 3
        for c in ch:
            self.downs.append(_down(cin, c))
            cin = c
        # Decoder: from 4×4 up to S/2, concatenating the encoder map of the same size (U-Net).
        self.ups = nn.ModuleList()
        self.out_channels = [ch[-1]]
        prev = ch[-1]
        for k in range(n_down - 2, -1, -1):
            up_c = ch[k]
            self.ups.append(_up(prev, up_c))
            prev = up_c + ch[k]
            self.out_channels.append(prev)
        # The full-resolution attribute is the S/2 map upsampled (as in AEI-Net), so no extra convs.
        self.out_channels.append(prev)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        h = x
        for down in self.downs:
            h = down(h)
            feats.append(h)
        attrs = [h]
        for i, up in enumerate(self.ups):
            skip = feats[len(feats) - 2 - i]
            h = torch.cat([up(h), skip], dim=1)
            attrs.append(h)
        attrs.append(F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False))
        return attrs


class AAD(nn.Module):
    """Adaptive Attentional Denormalization: ``(1 − M)·A + M·I`` on instance-normalised ``h``.

    Args:
        ch: channels of ``h``; att_ch: channels of the attribute map; id_dim: identity dimension.
    """

    def __init__(self, ch: int, att_ch: int, id_dim: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(ch, affine=False)
        self.att = nn.Conv2d(att_ch, 2 * ch, 1)
        self.idn = nn.Linear(id_dim, 2 * ch)
        self.mask = nn.Conv2d(ch, 1, 1)

    def forward(self, h: torch.Tensor, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h_bar = self.norm(h)
        g_a, b_a = self.att(a).chunk(2, dim=1)
        g_i, b_i = self.idn(z)[:, :, None, None].chunk(2, dim=1)
        m = torch.sigmoid(self.mask(h_bar))
        # 1 + γ so that an untrained layer starts close to plain instance norm.
        att = (1 + g_a) * h_bar + b_a
        ident = (1 + g_i) * h_bar + b_i
        return (1 - m) * att + m * ident


class AADResBlock(nn.Module):
    """Two AAD → ReLU → conv3×3 units with a residual connection (AAD → ReLU → conv1×1 when the
    channel count changes). Attribute modulation and masks are 1×1 convs, as in AEI-Net."""

    def __init__(self, cin: int, cout: int, att_ch: int, id_dim: int) -> None:
        super().__init__()
        self.aad1 = AAD(cin, att_ch, id_dim)
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1, bias=False)
        self.aad2 = AAD(cin, att_ch, id_dim)
        self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.skip = None
        if cin != cout:
            self.skip_aad = AAD(cin, att_ch, id_dim)
            self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, h: torch.Tensor, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.aad1(h, a, z)))
        out = self.conv2(F.relu(self.aad2(out, a, z)))
        res = h if self.skip is None else self.skip(F.relu(self.skip_aad(h, a, z)))
        return out + res


class AADGenerator(nn.Module):
    """Render identity ``z`` on attributes ``A``.

    Forward: ``z`` (N, id_dim) unit vectors, ``attrs`` from :class:`AttributeEncoder` →
    (N, 3, S, S) in [-1, 1].
    """

    def __init__(self, cfg: NetConfig, att_channels: list[int]) -> None:
        super().__init__()
        ch = cfg.gen_channels[: cfg.levels]
        self.stem = nn.ConvTranspose2d(cfg.id_dim, ch[0], 4, 1, 0)  # 1×1 → 4×4
        self.blocks = nn.ModuleList()
        for k in range(cfg.levels):
            cout = ch[k + 1] if k + 1 < cfg.levels else ch[k]
            self.blocks.append(AADResBlock(ch[k], cout, att_channels[k], cfg.id_dim))
        self.to_rgb = nn.Conv2d(ch[-1], 3, 3, 1, 1)

    def forward(self, z: torch.Tensor, attrs: list[torch.Tensor]) -> torch.Tensor:
        h = self.stem(z[:, :, None, None])
        for k, block in enumerate(self.blocks):
            h = block(h, attrs[k], z)
            if k + 1 < len(self.blocks):
                h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.tanh(self.to_rgb(h))


class FaceGenerator(nn.Module):
    """The shippable pair: attribute encoder + AAD generator.

    ``forward(target, z)`` → (output (N, 3, S, S) in [-1, 1], target attributes list).
    """

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = AttributeEncoder(cfg)
        self.generator = AADGenerator(cfg, self.encoder.out_channels)

    def forward(self, target: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        attrs = self.encoder(target)
        return self.generator(z, attrs), attrs


def _sn(module: nn.Module) -> nn.Module:
    return nn.utils.spectral_norm(module)


class PatchDiscriminator(nn.Module):
    """One PatchGAN: (N, 3, H, W) → (N, 1, H/8, W/8) logits (before hinge)."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, c in enumerate(channels):
            stride = 2 if i < len(channels) - 1 else 1
            layers += [_sn(nn.Conv2d(cin, c, 4, stride, 1)), nn.LeakyReLU(0.2, inplace=True)]
            cin = c
        layers.append(_sn(nn.Conv2d(cin, 1, 3, 1, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiScalePatchDiscriminator(nn.Module):
    """PatchGANs at full resolution and at successive 2× downsamplings: returns a list of logits."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(cfg.disc_channels) for _ in range(cfg.disc_scales))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
            outs.append(d(x))
        return outs


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
