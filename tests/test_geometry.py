"""Geometry matching of generated faces: the piecewise-affine warp, the 68-point landmark model,
and its effect on the landmark error of IdentityDP outputs (FaceMesh, an independent model)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from identitydp.align import align_face, template_for
from identitydp.blend import enlarged_box, paste_face, warp_piecewise_affine
from identitydp.detect import CenterFaceDetector


def _texture(size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def test_warp_with_equal_points_is_the_identity() -> None:
    img = _texture()
    pts = np.array([[30, 30], [66, 30], [48, 50], [35, 70], [61, 70]], np.float64)
    assert np.array_equal(warp_piecewise_affine(img, pts, pts), img)


def test_warp_moves_content_from_source_to_destination_points() -> None:
    img = _texture()
    src = np.array([[30, 30], [66, 30], [48, 48], [30, 66], [66, 66]], np.float64)
    dst = src + [3.0, 2.0]
    out = warp_piecewise_affine(img, src, dst)
    # Inside the points' hull the warp is a pure translation by (3, 2).
    inner = out[36:60, 36:60].astype(int)
    moved = img[34:58, 33:57].astype(int)
    assert np.abs(inner - moved).max() <= 1
    # The image corners are anchored.
    for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert np.abs(out[y, x].astype(int) - img[y, x]).max() <= 2


def test_warp_rejects_bad_points() -> None:
    img = _texture()
    with pytest.raises(ValueError):
        warp_piecewise_affine(img, np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError):
        warp_piecewise_affine(img, np.full((4, 2), np.nan), np.zeros((4, 2)))


def test_paste_never_touches_pixels_outside_the_region() -> None:
    frame = _texture(160)
    crop = np.full((64, 64, 3), 255, np.uint8)
    inverse = np.array([[2.0, 0.0, 16.0], [0.0, 2.0, 16.0]])  # the crop covers frame [16, 144)
    mask = np.ones((64, 64), np.float32)
    box = np.array([60.0, 60.0, 100.0, 100.0])
    region = enlarged_box(box, 0.25)
    out = paste_face(frame, crop, inverse, mask, region=region)
    x1, y1, x2, y2 = region
    outside = np.ones(frame.shape[:2], bool)
    outside[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = False
    assert np.array_equal(out[outside], frame[outside])
    assert (out[80, 80] == 255).all()  # the centre is fully pasted


def test_paste_of_a_shrunk_crop_is_area_filtered_not_aliased() -> None:
    # A 1-px checkerboard crop pasted at a third of its size: without a low-pass it aliases into
    # a pattern of near-black and near-white pixels; area-filtered it is the mean grey.
    frame = np.full((120, 120, 3), 128, np.uint8)
    checker = ((np.indices((96, 96)).sum(0) % 2) * 255).astype(np.uint8)
    crop = np.repeat(checker[..., None], 3, axis=2)
    inverse = np.array([[1 / 3, 0.0, 40.0], [0.0, 1 / 3, 40.0]])  # crop → frame [40, 72)
    out = paste_face(frame, crop, inverse, np.ones((96, 96), np.float32))
    inside = out[44:68, 44:68].astype(np.float64)
    assert abs(inside.mean() - 127.5) < 3 and inside.std() < 4


def test_paste_of_a_shrunk_crop_lands_where_its_affine_says() -> None:
    # A smooth ramp survives the area filter: pasted at half size, each frame pixel shows the crop
    # value at the affine's preimage of that pixel (pixel centres aligned), within a grey level.
    ramp = np.tile(np.linspace(0, 255, 128, dtype=np.float64)[None, :], (128, 1))
    crop = np.repeat(ramp.round().astype(np.uint8)[..., None], 3, axis=2)
    inverse = np.array([[0.5, 0.0, 20.25], [0.0, 0.5, 30.0]])
    out = paste_face(np.zeros((120, 120, 3), np.uint8), crop, inverse, np.ones((128, 128), np.float32))
    xs = np.arange(30, 70)
    expected = np.interp((xs - 20.25) / 0.5, np.arange(128), ramp[0])
    assert np.abs(out[60, 30:70, 0].astype(np.float64) - expected).max() <= 1.5


@pytest.fixture(scope="module")
def lfw_crops(lfw_images):
    det = CenterFaceDetector()
    out = []
    for path in lfw_images[:40:10]:
        img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces = det.detect(img)
        i = int(np.argmax(faces.scores))
        out.append((img, faces.subset([i])))
    return out


def test_landmarks68_on_real_aligned_crops(lfw_crops) -> None:
    from identitydp.models.landmarks68 import Landmarks68, crop_face_box

    model = Landmarks68()
    tpl = template_for(128, 0.25)
    box = crop_face_box(128, 0.25)
    assert np.allclose(box, [24, 36, 104, 116], atol=1.5)  # the measured dlib detector box
    for img, faces in lfw_crops:
        crop = align_face(img, faces.landmarks[0], size=128, margin=0.25).crop
        pts = model.predict(crop, box)
        assert pts.shape == (68, 2) and (pts >= 0).all() and (pts <= 128).all()
        # Eye centres (points 36-41, 42-47) land on the template's eyes.
        eyes = np.stack([pts[36:42].mean(0), pts[42:48].mean(0)])
        assert np.linalg.norm(eyes - tpl[:2], axis=1).max() < 6.0


@pytest.mark.slow
def test_geometry_matching_lowers_the_landmark_error(lfw_crops) -> None:
    """FaceMesh (the evaluation's landmark judge, not the model the warp uses) finds the original's
    landmarks closer on geometry-matched IdentityDP outputs than on unwarped ones."""
    from identitydp.generate.anonymizer import WEIGHTS_NAME, IdentityDPAnonymizer
    from identitydp.models.judges import FaceMesh
    from identitydp.models.registry import registry

    if WEIGHTS_NAME not in registry():
        pytest.skip("no generator registered")
    mesh = FaceMesh.load()
    errors = {}
    for geometry in (False, True):  # the warp is the v1 renderer's
        anon = IdentityDPAnonymizer(epsilon=4.0, seed=5, geometry=geometry, weights=WEIGHTS_NAME)
        errs = []
        for img, faces in lfw_crops:
            out = anon.anonymize_frame(img, faces, np.random.default_rng(0)).image
            ref = mesh.predict(img, faces.boxes, faces.landmarks).points[0, :, :2]
            got = mesh.predict(out, faces.boxes, faces.landmarks).points[0, :, :2]
            iod = np.linalg.norm(faces.landmarks[0, 1] - faces.landmarks[0, 0])
            errs.append(np.linalg.norm(got - ref, axis=1).mean() / iod)
        errors[geometry] = float(np.mean(errs))
    assert errors[True] < 0.8 * errors[False], errors


def test_paste_sharpen_restores_fine_detail_of_a_magnified_crop(lfw_images) -> None:
    # A real face crop magnified 2x into the frame loses fine-detail energy; the unsharp mask gives
    # part of it back, touches nothing where the mask is 0, and leaves a crop that is not magnified
    # (here 1:1) exactly as without it.
    from identitydp.eval.image_metrics import high_frequency_energy
    from identitydp.io import read_image

    image = read_image(lfw_images[0]).pixels
    crop = np.ascontiguousarray(image[75:175, 75:175])
    frame = cv2.resize(image, (500, 500), interpolation=cv2.INTER_LANCZOS4)
    box = np.array([175.0, 175.0, 325.0, 325.0])
    inverse = np.array([[2.0, 0.0, 150.5], [0.0, 2.0, 150.5]])
    mask = np.zeros((100, 100), np.float32)
    mask[10:90, 10:90] = 1.0
    plain = paste_face(frame, crop, inverse, mask)
    sharp = paste_face(frame, crop, inverse, mask, sharpen=0.5)
    assert high_frequency_energy(sharp, box) > 1.2 * high_frequency_energy(plain, box)
    untouched = np.ones(frame.shape[:2], bool)
    untouched[165:335, 165:335] = False
    assert np.array_equal(sharp[untouched], frame[untouched])
    one_to_one = np.array([[1.0, 0.0, 200.0], [0.0, 1.0, 200.0]])
    assert np.array_equal(paste_face(frame, crop, one_to_one, mask, sharpen=0.5), paste_face(frame, crop, one_to_one, mask))
