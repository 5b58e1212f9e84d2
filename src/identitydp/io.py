"""Image input and output.

Reading applies the EXIF orientation, converts pixels tagged with an ICC profile (Display P3,
Adobe RGB, ProPhoto, CMYK) to sRGB, and converts any mode (L, LA, P, RGBA, CMYK, I;16, …) to
RGB uint8, keeping an alpha channel aside so that it can be put back on output. Writing strips
all metadata (EXIF, GPS, XMP, ICC profile, comments), never overwrites an input, and is atomic
(temporary file in the target folder, then rename).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError, ImageWriteError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
_FORMAT_BY_SUFFIX = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}


def _read_umask() -> int:
    # /proc gives the umask without changing it (os.umask would, for every thread, for a moment).
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def output_mode() -> int:
    """File mode of a new output: what ``open()`` would give under the current umask (0666 & ~umask).

    Temporary files (``mkstemp``) are created 0600; outputs are renamed from them, so they are
    chmod-ed to this first.
    """
    return 0o666 & ~_read_umask()


@dataclass
class LoadedImage:
    """A decoded image.

    Attributes:
        pixels: (H, W, 3) uint8 RGB, EXIF orientation applied.
        alpha: (H, W) uint8 alpha channel, or None.
        path: where it came from, if a file.
        format: PIL format name of the source (JPEG, PNG, …).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    path: Path | None = None
    format: str | None = None


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _to_rgb(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    alpha = None
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[:, :, 3].copy()
        rgb = np.asarray(rgba.convert("RGB"))
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer grey: rescale by the type's range, not by the data, to keep exposure.
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    elif mode == "F":
        rgb = np.repeat(_float_to_grey(np.asarray(img))[:, :, None], 3, axis=2)
    else:  # RGB, L, 1, CMYK, YCbCr, LAB, HSV
        rgb = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(rgb, dtype=np.uint8), alpha


def _float_to_grey(arr: np.ndarray) -> np.ndarray:
    """(H, W) float grey (any range, NaN / inf allowed) → (H, W) uint8 that shows the scene.

    NaN and ±inf become black (a NaN must not turn the whole image black and hide its faces); a
    picture within [0, 1] is scaled by 255 (the usual float convention); anything brighter (HDR,
    raw sensor counts) is scaled so that its 99.5th percentile is white.
    """
    arr = np.asarray(arr, np.float64)
    finite = np.isfinite(arr)
    arr = np.where(finite, arr, 0.0)
    values = arr[finite]
    if values.size == 0:
        return np.zeros(arr.shape, np.uint8)
    low = min(0.0, float(values.min()))
    top = float(values.max())
    if top <= 1.0 and low >= 0.0:
        scale, low = 255.0, 0.0
    else:
        white = float(np.percentile(values, 99.5))
        scale = 255.0 / max(white - low, 1e-12)
    return np.clip((arr - low) * scale + 0.5, 0, 255).astype(np.uint8)


#: Largest image we decode, in pixels (150 megapixels, more than any camera sensor: a 3-channel
#: copy is 450 MB). Larger files are refused before decoding: a tiny PNG can claim 10^10 pixels
#: (a decompression bomb).
MAX_PIXELS = 150_000_000


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read an image file as RGB uint8 (plus alpha if any).

    Raises:
        ImageReadError: missing, unreadable, truncated, larger than ``max_pixels``, animated
            (only its first frame would be anonymized), or not an image; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Our own pixel limit replaces PIL's warning about large images.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            loaded = _open_and_decode(path, max_pixels)
        except ImageReadError:
            raise
        except MemoryError as exc:
            raise ImageReadError(f"{path}: not enough memory to decode it (lower --max-megapixels, or free memory)") from exc
        except Exception as exc:  # noqa: BLE001 - third-party decoders on untrusted bytes raise anything
            # (the fuzz target tests/fuzz_decoders.py found TypeError, struct.error, IndexError, ...)
            raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    for warning in caught:  # e.g. a truncated TIFF strip, corrupt EXIF: say which file, once
        log.warning("%s: %s", path, warning.message)
    return loaded


def _open_and_decode(path: Path, max_pixels: int) -> LoadedImage:
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path}: refusing to decode, more than the limit of {max_pixels / 1e6:.0f} megapixels ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from exc
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise ImageReadError(
                f"{path}: refusing to decode, {w}x{h} is {w * h / 1e6:.0f} megapixels, more than the limit of "
                f"{max_pixels / 1e6:.0f} (a decompression bomb, or an image to split first)"
            )
        if getattr(img, "is_animated", False) and getattr(img, "n_frames", 1) > 1:
            raise ImageReadError(
                f"{path}: animated image ({img.n_frames} frames): only its first frame would be anonymized; "
                "convert it to a video (e.g. ffmpeg -i in.gif out.mp4) and anonymize that"
            )
        return _decode(path, img)


def _to_srgb(img: Image.Image, path: Path) -> Image.Image:
    """Convert pixels tagged with an ICC profile (Display P3, Adobe RGB, ProPhoto, CMYK, ...) to
    sRGB: outputs carry no profile, so their numbers must already be sRGB, or colours shift."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK", "L", "LA"):
        return img
    from io import BytesIO

    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(BytesIO(icc))
        if ImageCms.getProfileDescription(source).strip().lower().startswith("srgb"):
            return img
        if img.mode in ("L", "LA"):
            return img  # a grey profile: grey stays grey (only its tone curve could differ)
        alpha = img.getchannel("A") if img.mode == "RGBA" else None
        base = img.convert("RGB") if img.mode == "RGBA" else img
        converted = ImageCms.profileToProfile(base, source, ImageCms.createProfile("sRGB"), outputMode="RGB",
                                              renderingIntent=ImageCms.Intent.PERCEPTUAL)
        if alpha is not None:
            converted.putalpha(alpha)
        return converted
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        log.warning("%s: cannot apply its ICC profile (%s); reading the numbers as sRGB", path, exc)
        return img


def _decode(path: Path, img) -> LoadedImage:
    fmt = img.format
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()  # forces a full decode so truncated files fail here, not later
        img = _to_srgb(ImageOps.exif_transpose(img), path)
        pixels, alpha = _to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"{path}: cannot read image ({exc})") from exc
    if pixels.size == 0:
        raise ImageReadError(f"{path}: image is empty")
    return LoadedImage(pixels=pixels, alpha=alpha, path=path, format=fmt)


def image_from_array(pixels: np.ndarray) -> LoadedImage:
    """Wrap an in-memory array: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA, uint8."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        return LoadedImage(pixels=np.repeat(arr[:, :, None], 3, axis=2))
    if arr.ndim == 3 and arr.shape[2] == 3:
        return LoadedImage(pixels=np.ascontiguousarray(arr))
    if arr.ndim == 3 and arr.shape[2] == 4:
        return LoadedImage(pixels=np.ascontiguousarray(arr[:, :, :3]), alpha=arr[:, :, 3].copy())
    raise ValueError(f"expected (H, W), (H, W, 3) or (H, W, 4) pixels, got {arr.shape}")


def write_image(
    path: str | os.PathLike,
    pixels: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    protected: set[Path] | None = None,
    overwrite: bool = False,
    quality: int = 95,
    before_commit=None,
) -> Path:
    """Write RGB uint8 pixels with no metadata at all, atomically.

    Args:
        path: destination; its suffix chooses the format.
        pixels: (H, W, 3) uint8 RGB.
        alpha: optional (H, W) uint8 alpha, kept for formats that store it.
        protected: resolved paths that must never be written (the inputs).
        overwrite: allow replacing an existing file that is not protected.
        quality: JPEG / WebP quality.
        before_commit: optional ``callable(tmp_path)`` run on the complete temporary file just
            before it is renamed to ``path`` (e.g. to record its hash); if it raises, nothing is
            written.

    Raises:
        ImageWriteError: the target is an input, exists (without ``overwrite``), has an unknown
            suffix, or cannot be written.
    """
    path = Path(path)
    fmt = _FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise ImageWriteError(f"{path}: unknown image suffix (use one of {', '.join(sorted(IMAGE_SUFFIXES))})")
    target = path.resolve()
    if protected and target in protected:
        raise ImageWriteError(f"{path}: refusing to overwrite an input image")
    if target.exists() and not overwrite:
        raise ImageWriteError(f"{path}: already exists (use --overwrite to replace it)")
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageWriteError(f"{path}: expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    if alpha is not None and fmt in _ALPHA_FORMATS:
        img = Image.fromarray(np.dstack([pixels, alpha]), mode="RGBA")
    else:
        img = Image.fromarray(pixels, mode="RGB")
    # A fresh image carries no info dict, so no EXIF/GPS/XMP/comment/ICC reaches the encoder.
    img.info = {}
    options: dict = {}
    if fmt == "JPEG":
        options = {"quality": quality, "optimize": True}
    elif fmt == "WEBP":
        options = {"quality": quality}
    elif fmt == "TIFF":
        options = {"compression": "tiff_deflate"}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".identitydp-{os.getpid()}-", suffix=path.suffix, dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                img.save(fh, format=fmt, **options)
            os.chmod(tmp_name, output_mode())
            if before_commit is not None:
                before_commit(Path(tmp_name))
            os.replace(tmp_name, target)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
    except OSError as exc:
        raise ImageWriteError(f"{path}: cannot write ({exc})") from exc
    return path


def collect_images(inputs: list[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """Expand files and folders (recursively) into (image path, path relative to its root).

    Files given directly keep just their name as the relative path. Hidden files and our own
    temporary files are skipped. Raises ImageReadError for an input that does not exist.
    """
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if p.is_file() and is_image_path(p) and not any(part.startswith(".") for part in p.relative_to(root).parts):
                    found.append((p, p.relative_to(root)))
        elif root.is_file():
            found.append((root, Path(root.name)))
        else:
            raise ImageReadError(f"{root}: no such file or folder")
    return found
