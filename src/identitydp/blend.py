"""Blending: paste a processed face crop back into the untouched frame.

Only pixels inside the (dilated) warped mask can change; every other pixel of the frame stays
bit-identical, which the tests assert.
"""

from __future__ import annotations

import cv2
import numpy as np

#: ``paste_face(..., sharpen=...)`` acts on crops enlarged by more than this factor only.
SHARPEN_MIN_MAGNIFICATION = 1.1


def warm_up_color_tables() -> None:
    """Make OpenCV build its 8-bit RGB<->Lab tables now (~0.1 s on the first conversion of a
    process), e.g. on a loading thread, instead of during the first paste."""
    pixel = np.zeros((1, 1, 3), np.uint8)
    cv2.cvtColor(cv2.cvtColor(pixel, cv2.COLOR_RGB2LAB), cv2.COLOR_LAB2RGB)


def match_colors(source: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shift ``source`` so its per-channel mean and std inside ``mask`` match ``reference``'s.

    Colour transfer in Lab space (Reinhard et al., 2001) restricted to the face region, so that a
    generated face takes the lighting and skin tone of the frame it goes into.

    Args:
        source, reference: (S, S, 3) uint8 RGB crops of the same size.
        mask: (S, S) float weights in [0, 1].

    Returns:
        (S, S, 3) uint8 RGB.
    """
    weights = mask.astype(np.float64)[..., None]
    total = weights.sum()
    if total < 1.0:
        return source
    src = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float64)
    ref = cv2.cvtColor(reference, cv2.COLOR_RGB2LAB).astype(np.float64)
    mu_s = (src * weights).sum((0, 1)) / total
    mu_r = (ref * weights).sum((0, 1)) / total
    sd_s = np.sqrt(((src - mu_s) ** 2 * weights).sum((0, 1)) / total) + 1e-6
    sd_r = np.sqrt(((ref - mu_r) ** 2 * weights).sum((0, 1)) / total) + 1e-6
    # Limit the contrast change: a blurred or flat source must not amplify noise without bound.
    gain = np.clip(sd_r / sd_s, 0.5, 2.0)
    out = (src - mu_s) * gain + mu_r
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def paste_face(
    frame: np.ndarray,
    crop: np.ndarray,
    inverse: np.ndarray,
    mask: np.ndarray,
    *,
    color_match: bool = False,
    original_crop: np.ndarray | None = None,
    region: np.ndarray | None = None,
    sharpen: float = 0.0,
) -> np.ndarray:
    """Paste a processed crop into a copy of ``frame`` with a feathered mask.

    Args:
        frame: (H, W, 3) uint8 RGB; not modified.
        crop: (S, S, 3) uint8 processed face crop.
        inverse: (2, 3) affine from crop pixels to frame pixels.
        mask: (S, S) float in [0, 1], crop coordinates; 1 = take the crop.
        color_match: match the crop's colours to ``original_crop`` inside the mask first.
        original_crop: (S, S, 3) uint8 crop of the original face, needed for ``color_match``.
        region: optional (4,) x1, y1, x2, y2 frame rectangle the paste may touch: the mask is
            faded to 0 over the last 6 % of the rectangle's size at its edges and is 0 outside,
            so nothing beyond it changes however far the crop's mask reaches.
        sharpen: unsharp-mask amount applied to the crop after it is magnified into the frame
            (0: off). Magnifying an S-px crop by m leaves nothing above its Nyquist band
            (period 2m frame px), so the pasted face looks softer than the photo around it; the
            mask boosts the band just below that, with a Gaussian of σ = m / 2 frame px. It
            reads only ``crop``. Nothing happens for a crop enlarged by less than
            :data:`SHARPEN_MIN_MAGNIFICATION`.

    Returns:
        (H, W, 3) uint8 frame. Pixels whose warped mask weight is 0 are bit-identical to ``frame``.
    """
    if color_match:
        if original_crop is None:
            raise ValueError("color_match needs original_crop")
        crop = match_colors(crop, original_crop, mask)
    crop, mask, inverse = _prefilter_for_minification(crop, mask, inverse)
    h, w = frame.shape[:2]
    size = crop.shape[0]
    # Bounding box of the warped crop, so the warp runs on a small window, not the whole frame.
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
    warped = corners @ inverse[:, :2].T + inverse[:, 2]
    x0 = int(max(0, np.floor(warped[:, 0].min()) - 2))
    y0 = int(max(0, np.floor(warped[:, 1].min()) - 2))
    x1 = int(min(w, np.ceil(warped[:, 0].max()) + 2))
    y1 = int(min(h, np.ceil(warped[:, 1].max()) + 2))
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)
    size_out = (x1 - x0, y1 - y0)
    # Lanczos, not bilinear: the crop is usually magnified into the frame, and a bilinear
    # resampling there low-passes the rendering (LFW, v2 renderer, ε = 1: sharpness ratio 0.61
    # bilinear, 0.84 bicubic, 0.86 Lanczos; docs/results/lfw300-lanczos).
    face = cv2.warpAffine(crop, shifted, size_out, flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REPLICATE)
    if sharpen > 0:
        magnification = float(np.sqrt(abs(np.linalg.det(inverse[:, :2]))))
        # A crop that lands smaller was area-filtered to about its frame size above (magnification
        # ≈ 1 after rounding): sharpening it would only boost its pixel noise.
        if magnification > SHARPEN_MIN_MAGNIFICATION:
            soft = cv2.GaussianBlur(face, (0, 0), sigmaX=magnification / 2.0)
            face = cv2.addWeighted(face, 1.0 + sharpen, soft, -sharpen, 0.0)
    alpha = cv2.warpAffine(mask.astype(np.float32), shifted, size_out, flags=cv2.INTER_LINEAR, borderValue=0.0)
    alpha = np.clip(alpha, 0.0, 1.0)
    if region is not None:
        alpha = alpha * _rect_ramp(size_out, np.asarray(region, np.float64) - (x0, y0, x0, y0))
    alpha = alpha[..., None]
    window = out[y0:y1, x0:x1].astype(np.float32)
    blended = window * (1.0 - alpha) + face.astype(np.float32) * alpha
    blended = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    # Where alpha is exactly 0 keep the original bytes (rounding must not touch them).
    keep = alpha[..., 0] <= 0.0
    blended[keep] = out[y0:y1, x0:x1][keep]
    out[y0:y1, x0:x1] = blended
    return out


def _prefilter_for_minification(crop: np.ndarray, mask: np.ndarray, inverse: np.ndarray
                                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-downsample a crop (and its mask) that lands smaller in the frame than it is.

    ``warpAffine`` interpolates without a low-pass filter, so a 128-px rendering pasted onto a
    40-px face would alias (moiré on hair, sparkling grain). The crop is first resized with area
    averaging to about its size in the frame, and the crop→frame affine adjusted to the new pixel
    grid (pixel centres kept aligned); a crop that is magnified passes through unchanged.

    Args:
        crop: (S, S, 3) uint8; mask: (S, S) float; inverse: (2, 3) crop pixels → frame pixels.

    Returns:
        (n, n, 3) crop, (n, n) mask and the (2, 3) affine from the new crop's pixels to the frame.
    """
    size = crop.shape[0]
    scale = float(np.sqrt(abs(np.linalg.det(np.asarray(inverse, np.float64)[:, :2]))))  # frame px per crop px
    n = max(4, int(round(size * scale)))
    if n >= size:
        return crop, mask, inverse
    k = size / n
    crop = cv2.resize(crop, (n, n), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(np.asarray(mask, np.float32), (n, n), interpolation=cv2.INTER_AREA)
    # Old crop coordinate x = k (x_new + ½) − ½, so frame = A k x_new + A (k − 1)/2 + t.
    linear = np.asarray(inverse, np.float64)[:, :2]
    adjusted = np.empty((2, 3), np.float64)
    adjusted[:, :2] = linear * k
    adjusted[:, 2] = np.asarray(inverse, np.float64)[:, 2] + linear @ np.full(2, (k - 1.0) / 2.0)
    return crop, mask, adjusted


def _rect_ramp(size: tuple[int, int], rect: np.ndarray, fade: float = 0.06) -> np.ndarray:
    """(h, w) float32 weights: 1 well inside ``rect`` (x1, y1, x2, y2 in window pixels), a linear
    ramp over ``fade`` of its size at the edges, exactly 0 at and beyond them."""
    w, h = size
    x1, y1, x2, y2 = rect
    rw, rh = max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)
    xs, ys = np.arange(w, dtype=np.float64) + 0.5, np.arange(h, dtype=np.float64) + 0.5
    wx = np.clip(np.minimum(xs - x1, x2 - xs) / (fade * rw), 0.0, 1.0)
    wy = np.clip(np.minimum(ys - y1, y2 - ys) / (fade * rh), 0.0, 1.0)
    return (wy[:, None] * wx[None, :]).astype(np.float32)


def enlarged_box(box: np.ndarray, dilation: float) -> np.ndarray:
    """(4,) box x1, y1, x2, y2 enlarged by ``dilation`` of its width / height on each side."""
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = (x2 - x1) * dilation, (y2 - y1) * dilation
    return np.array([x1 - dx, y1 - dy, x2 + dx, y2 + dy])


def box_region_mask(shape: tuple[int, int], box: np.ndarray, dilation: float = 0.15) -> np.ndarray:
    """Boolean (H, W) mask of a face box enlarged by ``dilation`` of its size on each side."""
    h, w = shape
    x1, y1, x2, y2 = [float(v) for v in box]
    dx, dy = (x2 - x1) * dilation, (y2 - y1) * dilation
    mask = np.zeros((h, w), bool)
    xa, ya = int(max(0, np.floor(x1 - dx))), int(max(0, np.floor(y1 - dy)))
    xb, yb = int(min(w, np.ceil(x2 + dx))), int(min(h, np.ceil(y2 + dy)))
    mask[ya:yb, xa:xb] = True
    return mask


def face_ellipse_mask(shape: tuple[int, int], box: np.ndarray, scale: float = 1.15, feather: float = 0.1) -> np.ndarray:
    """Soft elliptical (H, W) float mask in [0, 1] covering a face box (scaled by ``scale``).

    Used by the pixel-domain anonymizers (blur, pixelation, mask, DP-Pix), which act on the box
    region rather than on an aligned crop.
    """
    h, w = shape
    x1, y1, x2, y2 = [float(v) for v in box]
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ax, ay = max(1.0, (x2 - x1) / 2 * scale), max(1.0, (y2 - y1) / 2 * scale)
    xa, xb = int(max(0, np.floor(cx - ax - 1))), int(min(w, np.ceil(cx + ax + 1)))
    ya, yb = int(max(0, np.floor(cy - ay - 1))), int(min(h, np.ceil(cy + ay + 1)))
    mask = np.zeros((h, w), np.float32)
    if xb <= xa or yb <= ya:
        return mask
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32) + 0.5
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    mask[ya:yb, xa:xb] = np.clip((1.0 - r) / max(feather, 1e-3), 0.0, 1.0)
    return mask


def composite(frame: np.ndarray, replacement: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend ``replacement`` over ``frame`` with (H, W) ``alpha``; alpha == 0 keeps exact bytes."""
    a = alpha[..., None].astype(np.float32)
    out = np.clip(frame.astype(np.float32) * (1 - a) + replacement.astype(np.float32) * a + 0.5, 0, 255).astype(np.uint8)
    keep = alpha <= 0.0
    out[keep] = frame[keep]
    return out


def warp_piecewise_affine(image: np.ndarray, src_points: np.ndarray, dst_points: np.ndarray) -> np.ndarray:
    """Move the content at ``src_points`` to ``dst_points`` with a piecewise-affine warp.

    The plane is triangulated (Delaunay) on the destination points plus the image's corners and
    edge midpoints, which stay fixed, so the warp fades to the identity at the border. Each output
    pixel samples the source through the affine map of the triangle it falls in (triangles are
    rasterised once, so the cost is one remap, ≈ 2 ms at 128 px).

    Args:
        image: (H, W, C) uint8 image.
        src_points, dst_points: (K, 2) pixel coordinates (pixel centres at +0.5), K ≥ 3.

    Returns:
        Image of the same shape and dtype.
    """
    from scipy.spatial import Delaunay

    h, w = image.shape[:2]
    src = np.asarray(src_points, np.float64).reshape(-1, 2)
    dst = np.asarray(dst_points, np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 3:
        raise ValueError(f"need matching (K ≥ 3, 2) point sets, got {src.shape} and {dst.shape}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise ValueError("non-finite landmarks")
    bounds = np.array([w, h], np.float64)
    src, dst = np.clip(src, 0, bounds), np.clip(dst, 0, bounds)
    border = np.array([[0, 0], [w / 2, 0], [w, 0], [0, h / 2], [w, h / 2], [0, h], [w / 2, h], [w, h]], np.float64)
    src_all, dst_all = np.concatenate([src, border]), np.concatenate([dst, border])
    simplices = Delaunay(dst_all).simplices
    # Affine of each triangle, destination -> source: S = A @ [D; 1].
    d_h = np.concatenate([dst_all[simplices], np.ones((len(simplices), 3, 1))], 2)  # (T, 3, 3)
    affine = np.einsum("tij,tjk->tik", np.linalg.pinv(d_h), src_all[simplices]).transpose(0, 2, 1)  # (T, 2, 3)
    # Triangle index of every pixel; OpenCV's pixel (x, y) is our point (x + 0.5, y + 0.5).
    index = np.full((h, w), -1, np.int32)
    shift = 4
    for t, tri in enumerate(simplices):
        poly = np.round((dst_all[tri] - 0.5) * (1 << shift)).astype(np.int32)
        cv2.fillConvexPoly(index, poly, t, lineType=cv2.LINE_8, shift=shift)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    covered = index >= 0
    a = affine[np.where(covered, index, 0)]  # (H, W, 2, 3)
    map_x = a[..., 0, 0] * xx + a[..., 0, 1] * yy + a[..., 0, 2]
    map_y = a[..., 1, 0] * xx + a[..., 1, 1] * yy + a[..., 1, 2]
    map_x = np.where(covered, map_x, xx) - 0.5
    map_y = np.where(covered, map_y, yy) - 0.5
    return cv2.remap(image, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def multiband_blend(inside: np.ndarray, outside: np.ndarray, mask: np.ndarray, levels: int = 3) -> np.ndarray:
    """Laplacian-pyramid (Burt & Adelson) blend of two aligned images.

    Low frequencies cross over a wide band (colour and shading offsets fade out), fine detail
    over a narrow one (no halo), which hides seams better than one feathered alpha.

    Args:
        inside: (H, W, 3) uint8 image taken where ``mask`` is 1.
        outside: (H, W, 3) uint8 image taken where ``mask`` is 0.
        mask: (H, W) float weights in [0, 1].
        levels: pyramid levels (each halves the resolution).

    Returns:
        (H, W, 3) uint8 blend.
    """
    a = inside.astype(np.float32)
    b = outside.astype(np.float32)
    m = np.clip(mask.astype(np.float32), 0.0, 1.0)
    h, w = m.shape
    levels = max(1, min(levels, int(np.log2(max(2, min(h, w)))) - 2))
    ga, gb, gm = [a], [b], [m]
    for _ in range(levels):
        ga.append(cv2.pyrDown(ga[-1]))
        gb.append(cv2.pyrDown(gb[-1]))
        gm.append(cv2.pyrDown(gm[-1]))
    out = ga[-1] * gm[-1][..., None] + gb[-1] * (1 - gm[-1][..., None])
    for k in range(levels - 1, -1, -1):
        size = (ga[k].shape[1], ga[k].shape[0])
        la = ga[k] - cv2.pyrUp(ga[k + 1], dstsize=size)
        lb = gb[k] - cv2.pyrUp(gb[k + 1], dstsize=size)
        mk = gm[k][..., None]
        out = cv2.pyrUp(out, dstsize=size) + la * mk + lb * (1 - mk)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


#: Window (px) and percentile of the local residual spread that :func:`grain_level` reads, and
#: what that statistic is for pure Gaussian noise of σ = 1 (measured; 0.76 for σ = 1 … 8).
GRAIN_WINDOW = 5
GRAIN_PERCENTILE = 20
GRAIN_PER_SIGMA = 0.76


def grain_level(image: np.ndarray, region: np.ndarray, sigma: float = 1.0) -> float:
    """Sensor-grain level (σ of Gaussian luminance noise, grey levels) of an (H, W, 3) uint8 image
    over a boolean (H, W) region; 0 when the region is empty.

    Read from the *flattest* patches only: the local spread of the fine residual
    ``x − GaussianBlur(x, σ)`` in 5×5 windows, its 20th percentile over the region, divided by
    what that statistic is for pure noise of σ = 1. A plain standard deviation over the region
    counts hair, eyebrows and edges as grain (on ``samples/group.jpg`` it asked for 6.3 grey
    levels of noise where the background's flat patches carry 1.8, and speckled the skin).
    """
    if not region.any():
        return 0.0
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    resid = grey - cv2.GaussianBlur(grey, (0, 0), sigma)
    local = np.sqrt(np.maximum(cv2.blur(resid * resid, (GRAIN_WINDOW, GRAIN_WINDOW)), 0.0))
    return float(np.percentile(local[region], GRAIN_PERCENTILE)) / GRAIN_PER_SIGMA


def match_grain(rendered: np.ndarray, original: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                max_sigma: float = 6.0) -> np.ndarray:
    """Add sensor-like grain to a rendering so its fine noise matches the photo around the face.

    The grain level (:func:`grain_level`: noise in the flattest patches, not texture) is measured
    on the *context ring* just outside the repainted region (never inside it: the original inner
    face contributes nothing), compared with the rendering's own inside the region, and the
    missing part is added as Gaussian luminance noise, capped at ``max_sigma`` grey levels.

    Args:
        rendered: (S, S, 3) uint8 crop whose region ``mask`` > 0.5 was repainted.
        original: (S, S, 3) uint8 original crop (only its context ring is read).
        mask: (S, S) float repaint mask in [0, 1].
        rng: noise source.

    Returns:
        (S, S, 3) uint8, equal to ``rendered`` where ``mask`` is 0.
    """
    inner = mask > 0.5
    outer = cv2.dilate(inner.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))).astype(bool)
    ring = outer & (mask <= 0.0)
    target = grain_level(original, ring)
    have = grain_level(rendered, cv2.erode(inner.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool))
    add = float(np.sqrt(max(target * target - have * have, 0.0)))
    add = min(add, max_sigma)
    if add < 0.25:
        return rendered
    noise = rng.normal(0.0, add, rendered.shape[:2]).astype(np.float32)
    out = rendered.astype(np.float32) + (noise * np.clip(mask, 0.0, 1.0))[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
