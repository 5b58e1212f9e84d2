"""Differentiable identity features of generated crops: crop → dlib chip → centred unit vector.

The generator works on crops aligned with :func:`identitydp.align.template_for` at the training
margin; dlib's recognizer wants its own 150-px chip framing. Both are similarity warps of the same
5 landmarks, so the chip is an affine resampling of the crop (``grid_sample``), differentiable
with respect to the crop.

Identity vectors given to the generator are dlib descriptors centred by the training-set mean
and renormalised (docs/design.md#the-renderer): raw dlib descriptors of two random people have cosine ≈ 0.83,
centred ones ≈ 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

CHIP_SIZE = 150


def pixel_to_norm(size: int) -> np.ndarray:
    """(3, 3) map from pixel coordinates (cv2 convention: pixel centres at integers) to
    ``grid_sample`` normalised coordinates with ``align_corners=False``."""
    return np.array([[2.0 / size, 0.0, 1.0 / size - 1.0], [0.0, 2.0 / size, 1.0 / size - 1.0], [0.0, 0.0, 1.0]])


def warp_theta(matrix_in_to_out: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    """``affine_grid`` theta for a warp given as a (2, 3) pixel affine from input to output.

    Args:
        matrix_in_to_out: (..., 2, 3) affine, input pixels → output pixels.
        in_size, out_size: square image sides in pixels.

    Returns:
        (..., 2, 3) float32 theta mapping output normalised coordinates to input ones.
    """
    m = np.asarray(matrix_in_to_out, np.float64)
    full = np.zeros(m.shape[:-2] + (3, 3))
    full[..., :2, :] = m
    full[..., 2, 2] = 1.0
    inv = np.linalg.inv(full)
    theta = pixel_to_norm(in_size) @ inv @ np.linalg.inv(pixel_to_norm(out_size))
    return theta[..., :2, :].astype(np.float32)


def crop_to_chip_matrices(landmarks: np.ndarray) -> np.ndarray:
    """(N, 2, 3) affines from crop pixels to the dlib 150-px chip, from (N, 5, 2) crop landmarks."""
    from ..models.dlib_resnet import dlib_chip_matrix

    return np.stack([dlib_chip_matrix(lm) for lm in np.asarray(landmarks, np.float64)])


def crop_to_template_matrices(landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
    """(N, 2, 3) similarity affines from crop pixels to a (5, 2) landmark ``template``."""
    from ..align import estimate_similarity

    return np.stack([estimate_similarity(lm, template) for lm in np.asarray(landmarks, np.float64)])


def jitter_theta(theta: torch.Tensor, generator: torch.Generator | None = None, shift: float = 0.03,
                 scale: float = 0.05, angle_deg: float = 4.0) -> torch.Tensor:
    """Compose (N, 2, 3) thetas with a small random similarity (shift as a fraction of the image)."""
    n = theta.shape[0]
    dev = theta.device
    u = torch.rand(n, 4, device=dev, generator=generator) * 2 - 1
    ang = u[:, 0] * math.radians(angle_deg)
    s = 1 + u[:, 1] * scale
    jit = torch.zeros(n, 3, 3, device=dev)
    jit[:, 0, 0] = s * torch.cos(ang)
    jit[:, 0, 1] = -s * torch.sin(ang)
    jit[:, 1, 0] = s * torch.sin(ang)
    jit[:, 1, 1] = s * torch.cos(ang)
    jit[:, 0, 2] = u[:, 2] * 2 * shift
    jit[:, 1, 2] = u[:, 3] * 2 * shift
    jit[:, 2, 2] = 1
    full = torch.cat([theta, torch.tensor([0.0, 0.0, 1.0], device=dev).expand(n, 1, 3)], dim=1)
    return (full @ jit)[:, :2]


def resample(images: torch.Tensor, theta: torch.Tensor, out_size: int) -> torch.Tensor:
    """Affine-resample (N, C, S, S) images with (N, 2, 3) thetas to (N, C, out, out), border padding."""
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], images.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gaussian_kernels(sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    return k / k.sum(1, keepdim=True)


def degrade(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random, differentiable image degradations so that pixel-level adversarial patterns cannot
    satisfy the identity loss: per image a down-up resize (factor 0.5–1), a Gaussian blur
    (σ 0–1.2 px) and additive noise (σ 0–4 grey levels), roughly what JPEG and rescaling do.

    Args:
        images: (N, 3, H, W) float in 0..255.

    Returns:
        Same shape, float.
    """
    n, c, h, w = images.shape
    dev = images.device
    r = torch.rand(n, 3, device=dev, generator=generator)
    out = images
    # One down-up factor for the whole batch keeps this a single interpolate call.
    # Drawn on the CPU (seeded by torch.manual_seed) so that no device sync is needed.
    factor = 0.5 + 0.5 * float(torch.rand(1))
    if factor < 0.97:
        small = max(8, int(round(h * factor)))
        out = F.interpolate(out, size=(small, small), mode="bilinear", align_corners=False, antialias=True)
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    k = _gaussian_kernels(r[:, 0] * 1.2).to(out.dtype)  # (N, 7)
    pad = k.shape[1] // 2
    x = out.reshape(1, n * c, h, w)
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="replicate"), kx, groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="replicate"), ky, groups=n * c)
    out = x.reshape(n, c, h, w)
    noise = torch.randn(out.shape, device=dev, generator=generator, dtype=out.dtype)
    return out + noise * (r[:, 1] * 4.0).view(n, 1, 1, 1).to(out.dtype)


def centre(raw: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Centre (N, 128) raw dlib descriptors by the training mean (128,) and renormalise to unit L2."""
    return F.normalize(raw.float() - mean.to(raw.device).float(), dim=1)


def _unit_laplace(n: int, d: int, device, generator: torch.Generator | None) -> torch.Tensor:
    """(n, d) i.i.d. Laplace(0, 1) draws by inverse CDF (training only: not a DP sampler)."""
    u = torch.rand(n, d, device=device, generator=generator).clamp(1e-6, 1 - 1e-6) - 0.5
    return -torch.sign(u) * torch.log1p(-2 * u.abs())


def laplace_sphere_noise(z: torch.Tensor, generator: torch.Generator | None = None,
                         ratio_range: tuple[float, float] = (0.05, 20.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time noisy identities with the Laplace mechanism's shape (no DP guarantee needed).

    Per row, i.i.d. Laplace noise whose expected L2 norm relative to the unit signal is drawn
    log-uniformly from ``ratio_range`` (this spans every ε the mechanisms use: the Laplace scale
    is ``Δ1/ε`` with ``Δ1 = 2√d``), added to the centred unit vector ``z`` and projected back
    onto the sphere (the mechanism's post-processing).

    Args:
        z: (N, d) unit vectors.

    Returns:
        (noisy (N, d) unit vectors, noise-to-signal ratio (N,)).
    """
    n, d = z.shape
    lo, hi = math.log(ratio_range[0]), math.log(ratio_range[1])
    ratio = torch.exp(lo + (hi - lo) * torch.rand(n, device=z.device, generator=generator))
    scale = ratio / math.sqrt(2 * d)  # Laplace(b) has std √2·b per coordinate
    return F.normalize(z + _unit_laplace(n, d, z.device, generator) * scale[:, None], dim=1), ratio


def laplace_projection_noise(z: torch.Tensor, projection, generator: torch.Generator | None = None,
                             epsilon_range: tuple[float, float] = (0.25, 256.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-time noisy identities as the shipped projection mechanism releases them.

    The default release (:class:`identitydp.privacy.Projection` with the Laplace mechanism) is
    not a noisy point of the sphere but a point of a k-dimensional whitened ball decoded back to
    R^d; at small ε it lies on the ball's edge, an extreme combination of the top principal
    directions that :func:`laplace_sphere_noise` never produces. The renderer must have seen
    those. Per row: whiten and clip to the ball, add Laplace noise with scale ``2R√k / ε`` (the
    mechanism's L1 sensitivity) for ε drawn log-uniformly from ``epsilon_range``, clip again and
    decode (no DP guarantee is needed here; only the output distribution matters).

    Args:
        z: (N, d) unit vectors (centred descriptors, the projection's input space).
        projection: a :class:`identitydp.privacy.Projection` (public mean (d,), components (k, d),
            scales (k,), radius R).

    Returns:
        (noisy (N, d) unit vectors, ε (N,)).
    """
    n = z.shape[0]
    dev, dtype = z.device, z.dtype
    mean = torch.as_tensor(projection.mean, dtype=dtype, device=dev)
    comps = torch.as_tensor(projection.components, dtype=dtype, device=dev)
    scales = torch.as_tensor(projection.scales, dtype=dtype, device=dev)
    radius = float(projection.radius)
    k = comps.shape[0]

    def clip(y: torch.Tensor) -> torch.Tensor:
        return y * (radius / y.norm(dim=1, keepdim=True).clamp_min(radius))

    y = clip(((z - mean) @ comps.T) / scales)
    lo, hi = math.log(epsilon_range[0]), math.log(epsilon_range[1])
    eps = torch.exp(lo + (hi - lo) * torch.rand(n, device=dev, generator=generator))
    b = 2 * radius * math.sqrt(k) / eps
    y = clip(y + _unit_laplace(n, k, dev, generator) * b[:, None])
    return F.normalize(mean + (y * scales) @ comps, dim=1), eps
