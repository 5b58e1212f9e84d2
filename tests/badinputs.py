"""A corpus of bad and unusual inputs, generated on demand (never committed).

``build_corpus(folder)`` writes every case into ``folder`` and returns what each one is and what
the CLI must do with it. The faces come from the bundled public-domain sample
(``samples/group.jpg``, NASA's portrait of Eileen Collins), so the corpus needs no external data.

Kinds of case: corrupt and truncated files, decompression bombs, odd pixel modes (1-bit, grey,
palette, alpha, CMYK, 16-bit, float with values above 1 or NaN), metadata to strip (EXIF with GPS,
ICC, XMP, PNG text), odd sizes (1×1, one pixel high, a face filling the frame, a tiny face), odd
names (Unicode, spaces, a leading dash, a newline, very long, upper-case suffix, no suffix,
hidden), animated images, unsupported formats, and odd videos (empty, truncated, not a video, a
frame size that changes mid-stream, one frame).

Expectations:

- ``"output"``: an output is written; if ``face_box`` is set, that region must be changed.
- ``"error"``: no output; the CLI names the file in one line and goes on with the rest.
- ``"skip"``: not an input we read (unsupported suffix, hidden); the summary counts it by reason.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "group.jpg"
# The largest copy of the portrait in the sample (scripts/make_sample.py: 420 px at x=20, y=260).
PORTRAIT_CROP = (20, 260, 440, 680)


@dataclass
class Case:
    """One corpus file and what must happen to it.

    Attributes:
        name: short label for messages.
        path: the file (inside the corpus folder, possibly in a sub-folder).
        expect: ``"output"``, ``"error"`` or ``"skip"``.
        face_box: (x0, y0, x1, y1) pixels of a face in the *decoded, upright* image that the output
            must not leave unchanged, or None.
        reference: (H, W, 3) uint8 RGB the face box refers to (what a correct decoder sees), or None.
        video: True for a video input.
    """

    name: str
    path: Path
    expect: str
    face_box: tuple[int, int, int, int] | None = None
    reference: np.ndarray | None = None
    video: bool = False


def portrait() -> np.ndarray:
    """(420, 420, 3) uint8: the sample's largest face with some context."""
    x0, y0, x1, y1 = PORTRAIT_CROP
    return np.asarray(Image.open(SAMPLE).convert("RGB"))[y0:y1, x0:x1].copy()


# Face region of ``portrait()`` (CenterFace box, rounded inwards): the part that must change.
FACE_IN_PORTRAIT = (150, 52, 220, 148)


def _scaled_box(box, sx: float, sy: float, dx: int = 0, dy: int = 0) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (int(x0 * sx) + dx, int(y0 * sy) + dy, int(x1 * sx) + dx, int(y1 * sy) + dy)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header claims ``width``×``height`` 1-bit pixels."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    # Only a few rows of data: the header alone must be enough to refuse the file.
    idat = zlib.compress(row * 8, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _exif_with_gps(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"  # Make
    exif[0x0110] = "SecretPhone 9"  # Model
    exif[0x0112] = orientation
    exif[0x9286] = "taken at home"  # UserComment (in the IFD0 here, PIL accepts it)
    gps = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    exif[0x8825] = gps
    return exif.tobytes()


def _image_cases(root: Path, face: np.ndarray) -> list[Case]:
    cases: list[Case] = []
    box = FACE_IN_PORTRAIT
    pil = Image.fromarray(face)

    def add(name, path, expect, face_box=box, reference=face, **kw):
        cases.append(Case(name, path, expect, face_box, reference, **kw))

    # Controls and metadata to strip.
    add("plain JPEG", _save(pil, root / "plain.jpg", quality=90), "output")
    rotated = pil.transpose(Image.Transpose.ROTATE_90)  # stored sideways, EXIF says "rotate back"
    add("EXIF orientation 6 + GPS", _save(rotated, root / "exif_rotated_gps.jpg", exif=_exif_with_gps(6), quality=90), "output")
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    add("ICC + XMP", _save(pil, root / "icc_xmp.jpg", icc_profile=srgb, xmp=b"<x:xmpmeta>author=someone</x:xmpmeta>"), "output")
    info = PngInfo()
    info.add_text("Author", "someone"); info.add_text("Location", "48.85N 2.35E")
    add("PNG text chunks", _save(pil, root / "text_chunks.png", pnginfo=info), "output")
    add("progressive JPEG", _save(pil, root / "progressive.jpg", progressive=True, quality=80), "output")
    add("JPEG quality 5", _save(pil, root / "quality5.jpg", quality=5), "output")
    add("BMP", _save(pil, root / "plain.bmp"), "output")
    add("WebP", _save(pil, root / "plain.webp", quality=85), "output")
    add("TIFF LZW", _save(pil, root / "lzw.tiff", compression="tiff_lzw"), "output")
    add("upper-case suffix", _save(pil, root / "UPPER.JPG", quality=90), "output")
    add("double suffix", _save(pil, root / "double.png.jpg", quality=90), "output")

    # Odd pixel modes.
    grey = pil.convert("L")
    grey_ref = np.repeat(np.asarray(grey)[:, :, None], 3, axis=2)
    add("grey (L)", _save(grey, root / "grey.png"), "output", reference=grey_ref)
    la = grey.copy(); la.putalpha(Image.new("L", grey.size, 200))
    add("grey + alpha (LA)", _save(la, root / "grey_alpha.png"), "output", reference=grey_ref)
    add("palette (P)", _save(pil.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), root / "palette.png"), "output")
    pt = pil.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    add("palette with transparency", _save(pt, root / "palette_transparent.png", transparency=0), "output")
    rgba = pil.copy(); alpha = np.full(face.shape[:2], 255, np.uint8); alpha[:20] = 0; rgba.putalpha(Image.fromarray(alpha))
    add("RGBA", _save(rgba, root / "rgba.png"), "output")
    add("CMYK JPEG", _save(pil.convert("CMYK"), root / "cmyk.jpg", quality=90), "output")
    grey16 = Image.fromarray((np.asarray(grey).astype(np.uint16) * 257))
    add("16-bit grey PNG", _save(grey16, root / "grey16.png"), "output", reference=grey_ref)
    f01 = np.asarray(grey).astype(np.float32) / 255.0
    add("float TIFF in [0, 1]", _save(Image.fromarray(f01, mode="F"), root / "float01.tiff"), "output", reference=grey_ref)
    add("float TIFF, HDR values up to 4000", _save(Image.fromarray(f01 * 4000.0, mode="F"), root / "float_hdr.tiff"), "output", reference=grey_ref)
    fnan = f01.copy(); fnan[:10, :10] = np.nan; fnan[-5:, -5:] = np.inf
    add("float TIFF with NaN and inf", _save(Image.fromarray(fnan, mode="F"), root / "float_nan.tiff"), "output", reference=grey_ref)
    one = grey.convert("1")  # Floyd-Steinberg dithered
    add("1-bit PNG (dithered)", _save(one, root / "onebit.png"), "output", reference=grey_ref)
    add("1-bit TIFF (dithered)", _save(one, root / "onebit.tiff"), "output", reference=grey_ref)

    # Odd sizes.
    add("1x1", _save(Image.new("RGB", (1, 1), (200, 150, 120)), root / "one_pixel.png"), "output", face_box=None, reference=None)
    add("1 pixel high, 4000 wide", _save(Image.new("RGB", (4000, 1), (20, 30, 40)), root / "one_row.png"), "output", face_box=None, reference=None)
    add("3x3 JPEG", _save(Image.new("RGB", (3, 3), (90, 90, 90)), root / "three.jpg"), "output", face_box=None, reference=None)
    wide = Image.new("RGB", (6000, 240), (120, 130, 140)); wide.paste(pil.resize((200, 200)), (2900, 20))
    add("6000x240 panorama with a face", _save(wide, root / "panorama.jpg", quality=90), "output",
        face_box=_scaled_box(box, 200 / 420, 200 / 420, 2900, 20), reference=np.asarray(wide))
    # A head shot: the face fills ~95 % of the frame height (the failure the issue reported).
    x0, y0, x1, y1 = box
    tight = pil.crop((x0 - 10, y0 - 5, x1 + 10, y1 + 5)).resize((1500, 2030), Image.Resampling.BICUBIC)
    add("close-up head shot 1500x2030", _save(tight, root / "closeup.jpg", quality=90), "output",
        face_box=(250, 200, 1250, 1800), reference=np.asarray(tight))
    small = Image.new("RGB", (640, 480), (100, 110, 120)); small.paste(pil.resize((115, 115)), (300, 200))
    add("small face (about 20 px wide)", _save(small, root / "small_face.png"), "output",
        face_box=_scaled_box(box, 115 / 420, 115 / 420, 300, 200), reference=np.asarray(small))

    # Odd names.
    add("Unicode name", _save(pil, root / "visage é 顔.jpg", quality=90), "output")
    add("name with spaces", _save(pil, root / "with  two spaces .jpg", quality=90), "output")
    add("leading dash", _save(pil, root / "-rf.jpg", quality=90), "output")
    add("newline in name", _save(pil, root / "new\nline.jpg", quality=90), "output")
    add("200-character name", _save(pil, root / ("n" * 196 + ".jpg"), quality=90), "output")
    add("nested folder", _save(pil, root / "sub" / "deeper" / "nested.png"), "output")

    # Corrupt and truncated files.
    good_jpeg = (root / "plain.jpg").read_bytes()
    good_png = (root / "grey.png").read_bytes()

    def raw(name, filename, data, expect="error"):
        path = root / filename
        path.write_bytes(data)
        cases.append(Case(name, path, expect))

    raw("empty .jpg", "empty.jpg", b"")
    raw("random bytes .jpg", "random.jpg", np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    raw("text named .png", "text.png", b"this is not an image\n" * 20)
    raw("JPEG header only", "header_only.jpg", good_jpeg[:200])
    raw("truncated JPEG (60 %)", "truncated.jpg", good_jpeg[: int(len(good_jpeg) * 0.6)])
    raw("truncated PNG (50 %)", "truncated.png", good_png[: len(good_png) // 2])
    bad_crc = bytearray(good_png); bad_crc[40] ^= 0xFF
    raw("PNG with a bad checksum", "bad_crc.png", bytes(bad_crc))
    raw("PNG bomb 100000x100000", "bomb.png", png_bomb(100_000, 100_000))
    raw("PNG bomb 20000x8000 (160 MP)", "bomb_160mp.png", png_bomb(20_000, 8_000))
    # JPEG garbage after EOI: a decoder must still read the image.
    path = root / "trailing_garbage.jpg"
    path.write_bytes(good_jpeg + b"\x00garbage" * 100)
    cases.append(Case("JPEG with trailing garbage", path, "output", box, face))

    # Animated images: refused (only the first frame would be anonymized).
    frames = [pil, pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    path = root / "animated.webp"; frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    cases.append(Case("animated WebP", path, "error"))
    path = root / "animated.png"; frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    cases.append(Case("animated PNG (APNG)", path, "error"))

    # Not inputs: named in the summary by reason, never read.
    cases.append(Case("GIF (unsupported)", _save(pil.convert("P"), root / "still.gif"), "skip"))
    raw("HEIC (unsupported)", "phone.heic", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64, expect="skip")
    raw("no suffix", "noext", good_jpeg, expect="skip")
    cases.append(Case("hidden file", _save(pil, root / ".hidden.jpg", quality=90), "skip"))
    return cases


def _write_clip(path: Path, frames: list[np.ndarray], fps: int = 10, codec: str = "libx264") -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _video_cases(root: Path, face: np.ndarray) -> list[Case]:
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    small = np.asarray(Image.fromarray(face).resize((240, 240)))
    frames = []
    for i in range(12):
        canvas = np.full((360, 480, 3), 90, np.uint8)
        canvas[60:300, 100 + i * 4:340 + i * 4] = small
        frames.append(canvas)
    cases: list[Case] = []
    # The face in frame 0 (face_box and reference refer to the first frame of a video).
    box0 = _scaled_box(FACE_IN_PORTRAIT, 240 / 420, 240 / 420, 100, 60)
    ok = vids / "ok.mp4"; _write_clip(ok, frames)
    cases.append(Case("short clip", ok, "output", box0, frames[0], video=True))
    one = vids / "one_frame.mp4"; _write_clip(one, frames[:1])
    cases.append(Case("one-frame clip", one, "output", box0, frames[0], video=True))
    data = ok.read_bytes()
    (vids / "truncated.mp4").write_bytes(data[: len(data) // 2])
    cases.append(Case("truncated MP4 (no index)", vids / "truncated.mp4", "error", video=True))
    (vids / "empty.mp4").write_bytes(b"")
    cases.append(Case("empty .mp4", vids / "empty.mp4", "error", video=True))
    (vids / "text.mkv").write_bytes(b"not a video\n" * 100)
    cases.append(Case("text named .mkv", vids / "text.mkv", "error", video=True))
    # Two MPEG-1 streams of different sizes, concatenated: the frame size changes mid-stream.
    a, b = io.BytesIO(), io.BytesIO()
    for buf, size in ((a, (360, 480)), (b, (240, 320))):
        import av

        with av.open(buf, "w", format="mpeg") as container:
            stream = container.add_stream("mpeg1video", rate=25)  # MPEG-1 allows only standard rates
            stream.height, stream.width = size
            stream.pix_fmt = "yuv420p"
            for i in range(6):
                rgb = np.asarray(Image.fromarray(frames[i]).resize((size[1], size[0])))
                for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    (vids / "size_change.avi").write_bytes(a.getvalue() + b.getvalue())
    cases.append(Case("frame size changes mid-stream", vids / "size_change.avi", "error", video=True))
    return cases


def build_corpus(root: Path, *, videos: bool = True) -> list[Case]:
    """Write the corpus into ``root`` (created) and return its cases."""
    root.mkdir(parents=True, exist_ok=True)
    face = portrait()
    cases = _image_cases(root, face)
    if videos:
        cases += _video_cases(root, face)
    return cases


if __name__ == "__main__":  # python tests/badinputs.py OUT_DIR: write the corpus to look at
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bad-inputs")
    for case in build_corpus(out):
        print(f"{case.expect:6s} {case.name:40s} {case.path.relative_to(out)!s}")
