"""Pipeline tests on real faces: io, detection, alignment, blending, classical anonymizers, CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from identitydp import Anonymizer
from identitydp.align import align_face, estimate_similarity, face_mask, template_for, transform_points
from identitydp.anonymizers import DPPixAnonymizer, FaceAnonymizer, FrameResult, make_anonymizer
from identitydp.blend import paste_face
from identitydp.cli import main as cli_main
from identitydp.detect import CenterFaceDetector, Detections
from identitydp.errors import ImageReadError, ImageWriteError
from identitydp.io import collect_images, read_image

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "group.jpg"


@pytest.fixture(scope="module")
def detector() -> CenterFaceDetector:
    return CenterFaceDetector()


def _face(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def compose_scene(lfw_images: list[Path], sizes: list[int], canvas=(1080, 1920), seed: int = 0):
    """Paste LFW faces (the central face part of each 250×250 image) at given sizes on a textured canvas.

    Returns the canvas and the ground-truth face boxes (x1, y1, x2, y2).
    """
    rng = np.random.default_rng(seed)
    h, w = canvas
    yy, xx = np.mgrid[0:h, 0:w]
    scene = np.stack([(xx * 0.05) % 255, (yy * 0.07) % 255, ((xx + yy) * 0.03) % 255], -1).astype(np.uint8)
    scene = (scene // 2 + 60).astype(np.uint8)
    boxes = []
    people = lfw_images[:: max(1, len(lfw_images) // 97)]
    # Shelf packing (largest first), with random slack, so no two tiles overlap.
    order = sorted(range(len(sizes)), key=lambda k: -sizes[k])
    x, y, shelf = 8, 8, 0
    placed = {}
    for k in order:
        cw = int(sizes[k] * 1.6)
        if x + cw > w - 8:
            x, y, shelf = 8, y + shelf + 8, 0
        if y + cw > h - 8:
            raise ValueError("faces do not fit on the canvas")
        jitter = int(rng.integers(0, 8))
        placed[k] = (x + jitter, y)
        x, shelf = x + cw + 8 + jitter, max(shelf, cw)
    for k, size in enumerate(sizes):
        img = Image.open(people[k]).convert("RGB")
        # LFW deep-funneled faces sit in the central ~100 px of 250; take a crop with context.
        crop = img.crop((45, 40, 205, 200)).resize((int(size * 1.6), int(size * 1.6)), Image.LANCZOS)
        cw = crop.size[0]
        x, y = placed[k]
        scene[y : y + cw, x : x + cw] = np.asarray(crop)
        face_side = cw / 1.6
        off = (cw - face_side) / 2
        boxes.append([x + off, y + off, x + off + face_side, y + off + face_side])
    return scene, np.array(boxes)


def closeup_scene(face_image: np.ndarray, face_box, fraction: float, canvas=(2016, 1512), seed: int = 0):
    """Scale a photo so that its face box is ``fraction`` of the canvas height and paste it on a
    textured canvas (``canvas`` is (H, W); the default is a 1512×2016 portrait frame).

    ``face_box`` (x1, y1, x2, y2) is the face in ``face_image``. Where the scaled photo is larger
    than the canvas it is cropped (a close-up fills the frame). Returns the scene and the face
    box in scene pixels, clipped to the frame.
    """
    import cv2

    rng = np.random.default_rng(seed)
    h, w = canvas
    yy, xx = np.mgrid[0:h, 0:w]
    scene = (np.stack([(xx * 0.05) % 255, (yy * 0.07) % 255, ((xx + yy) * 0.03) % 255], -1) // 2 + 60).astype(np.uint8)
    box = np.asarray(face_box, np.float64)
    s = fraction * h / (box[3] - box[1])
    fh, fw = face_image.shape[:2]
    scaled = cv2.resize(face_image, (max(1, round(fw * s)), max(1, round(fh * s))),
                        interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    box = box * s
    bw, bh = box[2] - box[0], box[3] - box[1]
    # A random place for the face where it fits, else centred.
    cx = rng.uniform(bw / 2, w - bw / 2) if bw < w else w / 2
    cy = rng.uniform(bh / 2, h - bh / 2) if bh < h else h / 2
    ox, oy = int(round(cx - (box[0] + box[2]) / 2)), int(round(cy - (box[1] + box[3]) / 2))
    x0, y0 = max(0, ox), max(0, oy)
    x1, y1 = min(w, ox + scaled.shape[1]), min(h, oy + scaled.shape[0])
    scene[y0:y1, x0:x1] = scaled[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    truth = np.clip(box + [ox, oy, ox, oy], 0, [w, h, w, h])
    return scene, truth


def _iou(a, b):
    lt = np.maximum(a[:2], b[:2])
    rb = np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


# --------------------------------------------------------------------------------------- io


def test_read_every_format_and_mode(tmp_path, bundled_faces):
    base = Image.open(bundled_faces[0]).convert("RGB")
    cases = {
        "a.png": base.convert("RGBA"),
        "b.webp": base,
        "c.bmp": base,
        "d.tiff": base.convert("CMYK"),
        "e.png": base.convert("L"),
        "f.png": base.convert("LA"),
        "g.png": base.convert("P"),
        "h.png": Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257)),
        "i.jpg": base,
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        loaded = read_image(tmp_path / name)
        assert loaded.pixels.dtype == np.uint8 and loaded.pixels.shape == (250, 250, 3), name
        assert (loaded.alpha is not None) == (name in ("a.png", "f.png")), name
    # 16-bit grey keeps its exposure: the same brightness as the 8-bit grey version.
    grey = np.asarray(base.convert("L"), np.float64)
    assert abs(read_image(tmp_path / "h.png").pixels[..., 0].mean() - grey.mean()) < 1.0


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert read_image(tmp_path / "rot.jpg").pixels.shape == (40, 20, 3)


def test_bad_inputs_raise_clear_errors(tmp_path, bundled_faces):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match="text.jpg"):
        read_image(tmp_path / "text.jpg")
    data = Path(bundled_faces[0]).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png"):
        read_image(tmp_path / "empty.png")


def test_write_strips_metadata_and_never_overwrites_input(tmp_path, bundled_faces):
    src = tmp_path / "gps.jpg"
    img = Image.open(bundled_faces[1])
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}  # GPS IFD
    img.save(src, exif=exif, comment=b"secret comment")
    assert Image.open(src).getexif()
    out = tmp_path / "out.jpg"
    Anonymizer("blur").anonymize_file(src, out)
    back = Image.open(out)
    assert not back.getexif() and "exif" not in back.info and "comment" not in back.info
    assert not back.getexif().get_ifd(0x8825)
    with pytest.raises(ImageWriteError, match="input"):
        Anonymizer("blur").anonymize_file(src, src, overwrite=True)
    with pytest.raises(ImageWriteError, match="exists"):
        Anonymizer("blur").anonymize_file(src, out)
    # Atomic write leaves no temporary files behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gps.jpg", "out.jpg"]


def test_alpha_is_put_back(tmp_path, bundled_faces):
    rgba = Image.open(bundled_faces[2]).convert("RGBA")
    arr = np.asarray(rgba).copy()
    arr[:30, :, 3] = 0
    Image.fromarray(arr).save(tmp_path / "a.png")
    Anonymizer("pixelate").anonymize_file(tmp_path / "a.png", tmp_path / "b.png")
    back = np.asarray(Image.open(tmp_path / "b.png"))
    assert back.shape[2] == 4 and np.array_equal(back[..., 3], arr[..., 3])


# --------------------------------------------------------------------------- detect + align


def test_detects_lfw_faces(detector, lfw_images):
    found = sum(len(detector.detect(_face(p))) > 0 for p in lfw_images[:40])
    assert found >= 39


def test_detects_tight_crops(detector, train_dir):
    files = sorted((train_dir / "utkface").glob("*.jpg"))[:30]
    found = sum(len(detector.detect(_face(p))) > 0 for p in files)
    assert found >= 29


def test_empty_detections_never_none(detector):
    det = detector.detect(np.full((300, 400, 3), 127, np.uint8))
    assert isinstance(det, Detections) and len(det) == 0 and det.landmarks.shape == (0, 5, 2)


def test_scene_with_small_and_large_faces(detector, lfw_images):
    sizes = [24, 28, 32, 40, 48, 56, 64, 80, 100, 120, 150, 200]
    scene, truth = compose_scene(lfw_images, sizes)
    det = detector.detect(scene)
    hits = sum(any(_iou(t, b) > 0.3 for b in det.boxes) for t in truth)
    assert hits >= len(truth) - 1, (hits, len(truth))


def test_min_face_finds_every_face_of_that_size_in_a_720p_frame(lfw_images):
    """--min-face 40 runs the global pass at 0.6 scale on a 720p frame (24 px at the network for a
    40-px face): every face of 40 px and more is still found; a bad value is refused."""
    from identitydp.detect import MIN_FACE_AT_INPUT

    sizes = [40, 40, 44, 48, 48, 56, 64, 80, 100, 120]
    scene, truth = compose_scene(lfw_images[300:], sizes, canvas=(720, 1280), seed=3)
    coarse = CenterFaceDetector(pad_tight=False, min_face=40)
    det = coarse.detect(scene)
    assert all(any(_iou(t, b) > 0.3 for b in det.boxes) for t in truth), len(det)
    assert MIN_FACE_AT_INPUT / coarse.min_face == pytest.approx(0.6)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="min_face"):
            CenterFaceDetector(min_face=bad)


@pytest.mark.slow
def test_small_faces_in_a_12_megapixel_photo_are_found_by_the_tiles(lfw_images):
    """A 4000x3000 photo: the global pass runs at 0.32 scale, where faces under ~60 px fall below
    what CenterFace finds; the full-resolution tiles find them (without tiles 5 of 9 are lost)."""
    sizes = [28, 32, 36, 40, 48, 64, 96, 160, 320]
    scene, truth = compose_scene(lfw_images[600:], sizes, canvas=(3000, 4000), seed=2)
    det = CenterFaceDetector().detect(scene)
    missed = [size for size, t in zip(sizes, truth) if not any(_iou(t, b) > 0.3 for b in det.boxes)]
    assert missed == [], missed
    without_tiles = CenterFaceDetector(tile=0).detect(scene)
    assert sum(any(_iou(t, b) > 0.3 for b in without_tiles.boxes) for t in truth) < len(truth)


def test_detector_thread_count_does_not_change_the_faces(lfw_images):
    """The job layer runs CenterFace on half the cores: one ORT thread and two find the same faces
    (to float rounding); a bad thread count is refused."""
    scene, truth = compose_scene(lfw_images[40:], [30, 40, 60, 90, 120, 160], canvas=(720, 1280), seed=5)
    one = CenterFaceDetector(threads=1).detect(scene)
    two = CenterFaceDetector(threads=2).detect(scene)
    assert len(one) == len(two) >= len(truth) - 1
    np.testing.assert_allclose(one.boxes, two.boxes, atol=0.05)
    np.testing.assert_allclose(one.scores, two.scores, atol=1e-4)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            CenterFaceDetector(threads=bad)


@pytest.mark.parametrize("fraction", [0.85, 0.95])
def test_detects_close_ups(detector, lfw_images, fraction):
    """A face filling most of a 1512×2016 frame (a portrait, a selfie) is found, by the close-up
    pass; without it the detector missed 7 of 8 such faces at 85 % (issue 15)."""
    people = lfw_images[:: len(lfw_images) // 4][:4]
    for k, path in enumerate(people):
        img = _face(path)
        found = detector.detect(img)
        centres = (found.boxes[:, :2] + found.boxes[:, 2:]) / 2
        box = found.boxes[int(np.argmin(np.linalg.norm(centres - 125, axis=1)))]
        scene, truth = closeup_scene(img, box, fraction, canvas=(2016, 1512), seed=k)
        det = detector.detect(scene)
        assert any(_iou(truth, b) > 0.3 for b in det.boxes), f"{path.name}: face at {fraction:.0%} of the height missed"


def test_close_up_anonymized_end_to_end(bundled_faces):
    """The face is replaced, not written out untouched."""
    img = _face(bundled_faces[0])
    box = CenterFaceDetector().detect(img).boxes[0]
    scene, truth = closeup_scene(img, box, 0.85)
    out, report = Anonymizer("blur").anonymize(scene)
    assert report.num_faces >= 1
    x1, y1, x2, y2 = truth.astype(int)
    assert np.abs(out[y1:y2, x1:x2].astype(int) - scene[y1:y2, x1:x2]).mean() > 3


def test_threshold_is_configurable(bundled_faces):
    img = _face(bundled_faces[3])
    assert len(CenterFaceDetector(threshold=0.3).detect(img)) >= len(CenterFaceDetector(threshold=0.9).detect(img))
    with pytest.raises(ValueError):
        CenterFaceDetector(threshold=1.5)


def test_alignment_puts_landmarks_on_template(detector, bundled_faces):
    img = _face(bundled_faces[1])
    det = detector.detect(img)
    for size, margin in [(112, 0.0), (128, 0.25), (64, 0.1)]:
        aligned = align_face(img, det.landmarks[0], size=size, margin=margin)
        assert aligned.crop.shape == (size, size, 3)
        mapped = transform_points(det.landmarks[0], aligned.matrix)
        assert np.abs(mapped - template_for(size, margin)).max() < size * 0.08
        back = transform_points(mapped, aligned.inverse)
        assert np.allclose(back, det.landmarks[0], atol=1e-3)
    m = estimate_similarity(template_for(112), template_for(224))
    assert np.allclose(m[:, :2], 2 * np.eye(2))
    mask = face_mask(128)
    assert mask[64, 64] == 1.0 and mask[0, 0] == 0.0


def test_paste_keeps_outside_bit_identical(detector, bundled_faces):
    img = _face(bundled_faces[3])
    det = detector.detect(img)
    aligned = align_face(img, det.landmarks[0], size=128, margin=0.25)
    new_crop = np.full_like(aligned.crop, 200)
    mask = face_mask(128, 0.25)
    out = paste_face(img, new_crop, aligned.inverse, mask, color_match=True, original_crop=aligned.crop)
    import cv2

    warped_mask = cv2.warpAffine(mask, aligned.inverse, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR)
    outside = cv2.dilate((warped_mask > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) == 0
    assert np.array_equal(out[outside], img[outside])
    assert np.abs(out.astype(int) - img.astype(int))[warped_mask > 0.99].mean() > 5


# ----------------------------------------------------------------------------- anonymizers


@pytest.mark.parametrize("method", ["blur", "pixelate", "mask", "dp-pix"])
def test_methods_change_faces_and_only_faces(method, lfw_images):
    scene, truth = compose_scene(lfw_images, [60, 90, 130], canvas=(480, 720), seed=1)
    anon = Anonymizer(method, seed=0)
    out, report = anon.anonymize(scene)
    assert out.shape == scene.shape and out.dtype == np.uint8
    assert report.num_faces >= 3 and report.num_masked == 0
    changed = np.any(out != scene, axis=2)
    allowed = np.zeros(changed.shape, bool)
    for box in report.detections.boxes:
        x1, y1, x2, y2 = box
        cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * 0.7, (y2 - y1) * 0.7
        allowed[int(max(0, cy - hh)) : int(cy + hh) + 1, int(max(0, cx - hw)) : int(cx + hw) + 1] = True
    assert not changed[~allowed].any(), "pixels outside the dilated face regions changed"
    for t in truth:
        x1, y1, x2, y2 = t.astype(int)
        inner = np.abs(out[y1:y2, x1:x2].astype(int) - scene[y1:y2, x1:x2].astype(int)).mean()
        assert inner > 3, f"{method} left a face nearly unchanged"


def test_dp_pix_noise_scale_and_determinism():
    a = DPPixAnonymizer(epsilon=0.5, block=8, m=16)
    assert a.noise_scale == pytest.approx(3 * 255 * 16 / (64 * 0.5))  # three colour channels
    region = np.full((64, 64, 3), 128, np.uint8)
    out1, rec = a.process_region(region, 64, np.random.default_rng(3))
    out2, _ = a.process_region(region, 64, np.random.default_rng(3))
    assert np.array_equal(out1, out2) and rec["epsilon"] == 0.5
    # Clipped to [0, 255] and block-constant.
    assert out1.min() >= 0 and out1.max() <= 255
    assert np.all(out1[:8, :8] == out1[0, 0])
    with pytest.raises(ValueError):
        DPPixAnonymizer(epsilon=0)
    with pytest.raises(TypeError):
        DPPixAnonymizer(1.0)  # ε is keyword-only


def test_strong_blur_is_fast_and_close_to_exact(bundled_faces):
    """Above 32 px, σ is applied on a downscaled copy: within 2 levels of OpenCV's exact blur."""
    import time

    import cv2

    from identitydp.anonymizers.classical import BlurAnonymizer, gaussian_blur

    img = np.asarray(Image.open(bundled_faces[0]).convert("RGB").resize((520, 520)))
    for sigma in (33.0, 80.0, 200.0):
        exact = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
        diff = np.abs(gaussian_blur(img, sigma).astype(int) - exact)
        assert diff.mean() < 0.5 and diff.max() <= 3
    big = np.ascontiguousarray(np.asarray(Image.open(bundled_faces[0]).convert("RGB").resize((2200, 2200))))
    t0 = time.perf_counter()
    BlurAnonymizer(sigma=1.0).process_region(big, 1700.0, np.random.default_rng(0))  # was minutes
    assert time.perf_counter() - t0 < 2
    for bad in (0, -1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            BlurAnonymizer(sigma=bad)


class _BrokenMethod(FaceAnonymizer):
    """A method that fails on every frame, as a broken generator would."""

    name = "broken"

    def anonymize_frame(self, image, faces, rng) -> FrameResult:
        raise RuntimeError("generator exploded")


class _SkippingMethod(FaceAnonymizer):
    """A method that returns the frame untouched and reports nothing."""

    name = "skipping"

    def anonymize_frame(self, image, faces, rng) -> FrameResult:
        return FrameResult(image=image.copy(), faces=[])


@pytest.mark.parametrize("method", [_BrokenMethod(), _SkippingMethod()])
def test_fail_closed_masks_faces(method, bundled_faces):
    img = _face(bundled_faces[2])
    out, report = Anonymizer(method).anonymize(img)
    assert report.num_faces == 1 and report.num_masked == 1
    x1, y1, x2, y2 = report.detections.boxes[0].astype(int)
    assert out[y1 + 5 : y2 - 5, (x1 + x2) // 2].max() == 0  # solid black through the face


class _UnloadableMethod(FaceAnonymizer):
    """A method whose background model loading failed (as corrupt weights would)."""

    name = "unloadable"

    def ready(self) -> None:
        from identitydp.errors import WeightsError

        raise WeightsError("renderer weights do not fit the graph")

    def anonymize_frame(self, image, faces, rng) -> FrameResult:  # pragma: no cover - never reached
        raise AssertionError("anonymize_frame ran before ready()")


def test_a_model_that_cannot_load_is_an_error_not_masked_faces(bundled_faces):
    from identitydp.errors import WeightsError

    with pytest.raises(WeightsError, match="do not fit"):
        Anonymizer(_UnloadableMethod()).anonymize(_face(bundled_faces[2]))


def test_fail_closed_on_odd_crop():
    img = np.full((100, 100, 3), 90, np.uint8)
    det = Detections(
        np.array([[50.0, 50.0, 50.0, 80.0]], np.float32),
        np.array([0.9], np.float32),
        np.full((1, 5, 2), 99.7, np.float32),
    )
    out, report = Anonymizer("blur").anonymize(img, det)
    assert report.faces[0].status == "masked"


def test_api_rejects_bad_images():
    with pytest.raises(ValueError):
        Anonymizer("blur").anonymize(np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError):
        make_anonymizer("nonsense")


# ------------------------------------------------------------------------------------- CLI


def test_cli_folder_tree_and_exit_codes(tmp_path, bundled_faces, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i, p in enumerate(bundled_faces[0:4]):
        Image.open(p).save(src / ("sub" if i % 2 else ".") / f"{i}.jpg")
    (src / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    out = tmp_path / "out"
    code = cli_main(["anonymize", str(src), "-o", str(out), "--method", "pixelate"])
    assert code == 1  # one input failed, the others were written
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert written == ["0.jpg", "2.jpg", "sub/1.jpg", "sub/3.jpg"]
    text = capsys.readouterr()
    assert "4 faces anonymized" in text.out and "broken.jpg" in text.err
    assert cli_main(["anonymize", str(src / "0.jpg"), "-o", str(out / "0.jpg")]) == 0  # exists: skipped (resume)
    assert "1 skipped" in capsys.readouterr().out
    assert cli_main(["anonymize", str(src / "0.jpg"), "-o", str(out / "0.jpg"), "--overwrite"]) == 0


def test_cli_detect_json(tmp_path, capsys):
    assert cli_main(["detect", str(SAMPLE), "-o", str(tmp_path / "d.json")]) == 0
    import json

    faces = json.loads((tmp_path / "d.json").read_text())[0]["faces"]
    assert len(faces) == 5 and all(len(f["landmarks"]) == 5 for f in faces)


def test_console_script_on_sample(tmp_path):
    out = tmp_path / "group.jpg"
    proc = subprocess.run(
        [sys.executable, "-m", "identitydp.cli", "anonymize", str(SAMPLE), "-o", str(out), "--method", "dp-pix", "--epsilon", "1", "--seed", "1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "5 faces anonymized" in proc.stdout
    assert out.exists() and read_image(out).pixels.shape == read_image(SAMPLE).pixels.shape
    bad = subprocess.run([sys.executable, "-m", "identitydp.cli", "anonymize", str(tmp_path / "nope.jpg")], capture_output=True, text=True)
    assert bad.returncode != 0 and "nope.jpg" in bad.stderr


def test_collect_images_rejects_missing(tmp_path):
    with pytest.raises(ImageReadError):
        collect_images([tmp_path / "nope"])


def test_cli_budget_refuses_before_writing(tmp_path, capsys, private_ledger):
    from conftest import read_ledger

    out = tmp_path / "o.jpg"
    args = ["anonymize", str(SAMPLE), "-o", str(out), "--method", "dp-pix", "--epsilon", "1", "--budget", "1.5"]
    assert cli_main(args) == 0
    first = read_ledger(private_ledger)
    assert first["max_spent_epsilon"] == 1.0 and first["releases"]["released"] == 5
    out.unlink()
    # The same photo again is a second release of the same faces: over budget, nothing written.
    assert cli_main(args) == 1
    assert not out.exists() and read_ledger(private_ledger)["release_log"] == first["release_log"]
    assert "over its budget" in capsys.readouterr().err
    assert cli_main(["anonymize", str(SAMPLE), "-o", str(out), "--method", "blur", "--budget", "1"]) == 2  # blur has no ε


def test_cli_default_is_identitydp_at_epsilon_1(tmp_path, private_ledger) -> None:
    """No --method: IdentityDP at ε = 1, with its privacy ledger."""
    from conftest import read_ledger

    out = tmp_path / "default.jpg"
    assert cli_main(["anonymize", str(SAMPLE), "-o", str(out), "--seed", "2", "--quiet"]) == 0
    ledger = read_ledger(private_ledger)
    assert ledger["max_spent_epsilon"] == 1.0
    assert not np.array_equal(read_image(out).pixels, read_image(SAMPLE).pixels)
