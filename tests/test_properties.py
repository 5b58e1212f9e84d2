"""Property-based tests (Hypothesis) of the geometry, masks, blending and image I/O.

Each property holds for *every* input in its domain, not only for the photos of the other tests:
similarity fits recover the transform they were made from, masks stay in [0, 1] for any box (also
off-frame or degenerate), compositing never touches a pixel with alpha 0, lossless formats round
trip, and no byte string makes the decoder raise anything but :class:`ImageReadError`.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from identitydp.align import align_face, estimate_similarity, face_mask, template_for, transform_points
from identitydp.blend import composite, face_ellipse_mask, multiband_blend, warp_piecewise_affine
from identitydp.errors import ImageReadError
from identitydp.io import _float_to_grey, read_image, write_image

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
points = arrays(np.float64, st.tuples(st.integers(3, 12), st.just(2)), elements=st.floats(-500, 500))


def _similarity(scale: float, angle: float, tx: float, ty: float) -> np.ndarray:
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    return np.array([[c, -s, tx], [s, c, ty]])


@SETTINGS
@given(points, st.floats(0.05, 20), st.floats(-math.pi, math.pi), finite, finite)
def test_similarity_fit_recovers_the_transform(src, scale, angle, tx, ty):
    spread = np.linalg.norm(src - src.mean(0), axis=1).max()
    assume(spread > 1.0)
    m = _similarity(scale, angle, tx, ty)
    fitted = estimate_similarity(src, transform_points(src, m))
    np.testing.assert_allclose(transform_points(src, fitted), transform_points(src, m), atol=1e-6 * max(1.0, scale * spread))


@SETTINGS
@given(points, st.floats(0.05, 20), st.floats(-math.pi, math.pi), finite, finite)
def test_inverse_maps_back(src, scale, angle, tx, ty):
    import cv2

    m = _similarity(scale, angle, tx, ty)
    back = transform_points(transform_points(src, m), cv2.invertAffineTransform(m))
    np.testing.assert_allclose(back, src, atol=1e-6 * max(1.0, np.abs(src).max(), abs(tx) / scale, abs(ty) / scale))


def test_coincident_points_are_refused():
    with pytest.raises(ValueError, match="degenerate"):
        estimate_similarity(np.ones((5, 2)), np.zeros((5, 2)))


@SETTINGS
@given(st.integers(16, 160), st.floats(0.0, 0.6), st.floats(0.3, 4), st.floats(-0.5, 0.5))
def test_alignment_puts_landmarks_on_the_template(size, margin, scale, angle):
    tpl = template_for(size, margin)
    m = _similarity(scale, angle, 37.0, 11.0)
    landmarks = transform_points(tpl, m)  # a face that is exactly a similarity of the template
    image = np.zeros((400, 400, 3), np.uint8)
    aligned = align_face(image, landmarks, size=size, margin=margin)
    np.testing.assert_allclose(transform_points(landmarks, aligned.matrix), tpl, atol=1e-6 * size)
    assert aligned.crop.shape == (size, size, 3)


@SETTINGS
@given(st.integers(8, 256), st.floats(0.0, 0.6), st.floats(0.0, 0.15))  # feathers in use: 0.08
def test_face_mask_is_a_soft_ellipse_in_unit_range(size, margin, feather):
    mask = face_mask(size, margin, feather)
    assert mask.shape == (size, size) and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert mask[0, 0] == 0.0 and mask[0, -1] == 0.0  # the crop's corners are background


boxes = st.tuples(st.floats(-300, 600), st.floats(-300, 600), st.floats(0, 500), st.floats(0, 500)).map(
    lambda t: np.array([t[0], t[1], t[0] + t[2], t[1] + t[3]]))


@SETTINGS
@given(st.integers(1, 80), st.integers(1, 80), boxes, st.floats(0.5, 2.0), st.floats(0.0, 0.5))
def test_ellipse_mask_for_any_box(h, w, box, scale, feather):
    mask = face_ellipse_mask((h, w), box, scale=scale, feather=feather)
    assert mask.shape == (h, w)
    assert np.all(np.isfinite(mask)) and mask.min() >= 0.0 and mask.max() <= 1.0


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), st.data())
def test_composite_keeps_every_pixel_with_alpha_zero(h, w, data):
    frame = data.draw(arrays(np.uint8, (h, w, 3)))
    other = data.draw(arrays(np.uint8, (h, w, 3)))
    alpha = data.draw(arrays(np.float32, (h, w), elements=st.sampled_from([0.0, 0.3, 1.0])))
    out = composite(frame, other, alpha)
    keep, take = alpha == 0.0, alpha == 1.0
    assert np.array_equal(out[keep], frame[keep])
    assert np.array_equal(out[take], other[take])


@SETTINGS
@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 6), st.data())
def test_multiband_blend_with_a_constant_mask_is_that_image(h, w, levels, data):
    inside = data.draw(arrays(np.uint8, (h, w, 3)))
    outside = data.draw(arrays(np.uint8, (h, w, 3)))
    ones, zeros = np.ones((h, w), np.float32), np.zeros((h, w), np.float32)
    # The pyramid is exact up to float rounding: at most one level off.
    assert np.abs(multiband_blend(inside, outside, ones, levels).astype(int) - inside).max() <= 1
    assert np.abs(multiband_blend(inside, outside, zeros, levels).astype(int) - outside).max() <= 1


@SETTINGS
@given(st.integers(8, 64), st.integers(8, 64), st.data())
def test_piecewise_warp_with_fixed_points_is_the_identity(h, w, data):
    image = data.draw(arrays(np.uint8, (h, w, 3)))
    pts = data.draw(arrays(np.float64, (6, 2), elements=st.floats(0.0, 1.0))) * [w, h]
    assume(np.linalg.matrix_rank(pts - pts.mean(0)) == 2)
    assume(len(np.unique(np.round(pts, 3), axis=0)) == len(pts))
    out = warp_piecewise_affine(image, pts, pts)
    assert out.shape == image.shape
    assert np.abs(out.astype(int) - image).max() <= 1


@SETTINGS
@given(arrays(np.float64, st.tuples(st.integers(1, 20), st.integers(1, 20)),
              elements=st.floats(allow_nan=True, allow_infinity=True, width=32)))
def test_float_pixels_of_any_value_decode_to_grey(arr):
    grey = _float_to_grey(arr)
    assert grey.shape == arr.shape and grey.dtype == np.uint8
    ok = np.isfinite(arr)
    # Monotone on the finite values: a brighter input pixel is never darker.
    order = np.argsort(arr[ok], kind="stable")
    assert np.all(np.diff(grey[ok][order].astype(int)) >= 0)


@SETTINGS
@given(st.integers(1, 48), st.integers(1, 48), st.sampled_from([".png", ".bmp", ".tiff"]), st.booleans(), st.data())
def test_lossless_formats_round_trip_without_metadata(tmp_path_factory, h, w, suffix, with_alpha, data):
    pixels = data.draw(arrays(np.uint8, (h, w, 3)))
    alpha = data.draw(arrays(np.uint8, (h, w))) if with_alpha else None
    path = tmp_path_factory.mktemp("rt") / f"x{suffix}"
    write_image(path, pixels, alpha)
    back = read_image(path)
    assert np.array_equal(back.pixels, pixels)
    if alpha is not None and suffix != ".bmp":
        assert np.array_equal(back.alpha, alpha)
    with Image.open(path) as img:
        assert not {"exif", "icc_profile", "xmp", "comment"} & set(img.info)


_SEEDS = None


def _seed_files() -> list[bytes]:
    """Small valid files of each format to mutate (made here, no data needed)."""
    global _SEEDS
    if _SEEDS is None:
        rng = np.random.default_rng(0)
        img = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        out = []
        for fmt, kw in (("PNG", {}), ("JPEG", {"quality": 80}), ("WEBP", {}), ("BMP", {}), ("TIFF", {})):
            buf = io.BytesIO()
            img.save(buf, format=fmt, **kw)
            out.append(buf.getvalue())
        _SEEDS = out
    return _SEEDS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 4), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       st.integers(0, 10_000), st.sampled_from([".png", ".jpg", ".webp", ".bmp", ".tiff"]))
def test_decoder_raises_only_image_read_error_on_mutated_files(tmp_path_factory, which, flips, cut, suffix):
    data = bytearray(_seed_files()[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data[: max(0, len(data) - cut % (len(data) + 1))])
    path: Path = tmp_path_factory.mktemp("fz") / f"f{suffix}"
    path.write_bytes(data)
    try:
        img = read_image(path)
    except ImageReadError:
        return
    assert img.pixels.dtype == np.uint8 and img.pixels.ndim == 3 and img.pixels.shape[2] == 3


FINDINGS = Path(__file__).parent / "fuzz_findings"


@pytest.mark.parametrize("finding", sorted(FINDINGS.glob("*")), ids=lambda p: p.name)
def test_fuzz_findings_are_clear_errors(tmp_path, finding):
    """Inputs that once crashed the decoder (first byte: the suffix, as in tests/fuzz_decoders.py)."""
    from fuzz_decoders import SUFFIXES

    data = finding.read_bytes()
    path = tmp_path / f"finding{SUFFIXES[data[0] % len(SUFFIXES)]}"
    path.write_bytes(data[1:])
    with pytest.raises(ImageReadError, match="cannot read image"):
        read_image(path)


@pytest.mark.slow
def test_fuzz_target_runs_clean(tmp_path):
    """A short libFuzzer session of tests/fuzz_decoders.py (about 10 s): no finding."""
    import resource
    import subprocess
    import sys

    pytest.importorskip("atheris", reason="atheris has wheels for x86-64 Linux/macOS only")
    script = Path(__file__).parent / "fuzz_decoders.py"
    # Linux hands a child the parent's peak RSS (ru_maxrss survives fork and exec), and libFuzzer
    # measures its 2 GiB limit on that figure: after the heavy tests this pytest process alone can be
    # past 2 GiB, so the limit is 2 GiB above what the child starts with.
    inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    proc = subprocess.run([sys.executable, str(script), "-atheris_runs=6000", "-seed=1", f"-artifact_prefix={tmp_path}/",
                           f"-rss_limit_mb={inherited_mb + 2048}", str(tmp_path / "corpus")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*"))
