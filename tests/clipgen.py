"""Synthetic test clips made of real LFW faces moving over a background, with ground truth.

Used by tests/test_video.py and benchmarks/video_fps.py. A face is a *sprite*: the central part
of an LFW deep-funneled image (face, hair, a little background) with a soft elliptical alpha,
pasted at a scripted position and size per frame. The ground truth per frame is the face box
(from CenterFace run once on the clean LFW image, mapped into the frame) and a visibility mask of
that face (what is not covered by an occluder or by a face drawn above it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

# Crop of the 250×250 deep-funneled image used as the sprite (x0, y0, x1, y1).
SPRITE_CROP = (40, 30, 210, 220)


@dataclass
class Sprite:
    """One LFW face ready to paste.

    Attributes:
        rgb: (h, w, 3) uint8 crop of the LFW image.
        alpha: (h, w) float32 soft elliptical mask in [0, 1].
        face_box: (4,) face box x1, y1, x2, y2 in crop pixels (CenterFace on the clean image).
        path: the LFW file.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    face_box: np.ndarray
    path: Path


def load_sprites(lfw_images: list[Path], count: int, detector, start: int = 0) -> list[Sprite]:
    """Pick ``count`` LFW images of different people whose face CenterFace finds cleanly."""
    sprites: list[Sprite] = []
    seen_people: set[str] = set()
    x0, y0, x1, y1 = SPRITE_CROP
    step = max(1, len(lfw_images) // 211)
    for path in lfw_images[start::step]:
        if path.parent.name in seen_people:
            continue
        image = np.asarray(Image.open(path).convert("RGB"))
        det = detector.detect(image)
        centred = [i for i, b in enumerate(det.boxes) if abs((b[0] + b[2]) / 2 - 125) < 25 and abs((b[1] + b[3]) / 2 - 125) < 30]
        if len(centred) != 1 or det.scores[centred[0]] < 0.9 or len(det) > 1:
            continue
        box = det.boxes[centred[0]].astype(np.float64) - [x0, y0, x0, y0]
        crop = image[y0:y1, x0:x1]
        h, w = crop.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2)
        alpha = np.clip((1.0 - r) / 0.15, 0.0, 1.0).astype(np.float32)
        sprites.append(Sprite(np.ascontiguousarray(crop), alpha, box.astype(np.float32), path))
        seen_people.add(path.parent.name)
        if len(sprites) == count:
            return sprites
    raise RuntimeError(f"found only {len(sprites)} clean LFW faces, wanted {count}")


def background(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured, face-free background (smooth colour noise plus a few rectangles)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(40, 200, size=(max(2, height // 40), max(2, width // 40), 3)).astype(np.uint8)
    bg = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(8):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 20, width // 5)), int(rng.integers(height // 20, height // 5))
        cv2.rectangle(bg, (x, y), (x + w, y + h), tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    noise = rng.normal(0, 4, size=bg.shape)
    return np.clip(bg.astype(np.float64) + noise, 0, 255).astype(np.uint8)


# A face's script: frame index -> (cx, cy, face_height) of the face box in frame pixels, or None
# when the face is not in the picture at all.
Script = Callable[[int], tuple[float, float, float] | None]


@dataclass
class FaceSpec:
    """A face of a clip: its sprite, its motion script, and frames where an occluder hides it."""

    sprite: Sprite
    script: Script
    hidden: set[int] = field(default_factory=set)
    name: str = ""


@dataclass
class GroundTruthFace:
    """One face in one frame.

    Attributes:
        face: index of the face in the clip's ``faces``.
        box: (4,) face box in frame pixels (may extend past the border).
        visible: (H, W) bool mask of the face box pixels that are visible in the frame.
    """

    face: int
    box: np.ndarray
    visible: np.ndarray


@dataclass
class Clip:
    """A composed clip: ``frames()`` renders it one frame at a time with its ground truth."""

    height: int
    width: int
    num_frames: int
    faces: list[FaceSpec]
    fps: Fraction = Fraction(25)
    seed: int = 0
    occluder: tuple[int, int, int] = (90, 90, 90)

    def __post_init__(self) -> None:
        self._bg = background(self.height, self.width, self.seed)

    def render(self, t: int) -> tuple[np.ndarray, list[GroundTruthFace]]:
        frame = self._bg.copy()
        owner = np.full((self.height, self.width), -1, np.int32)  # topmost face id per pixel
        boxes: dict[int, np.ndarray] = {}
        for k, spec in enumerate(self.faces):
            place = spec.script(t)
            if place is None:
                continue
            box = self._paste(frame, owner, k, spec, place)
            if box is not None:
                boxes[k] = box
            if t in spec.hidden and box is not None:
                # An occluder (a grey card) covers the face's whole sprite.
                x0, y0, x1, y1 = self._sprite_rect(spec, place)
                xa, ya, xb, yb = max(0, x0), max(0, y0), min(self.width, x1), min(self.height, y1)
                if xb > xa and yb > ya:
                    frame[ya:yb, xa:xb] = self.occluder
                    owner[ya:yb, xa:xb] = -1
        truths = []
        for k, box in boxes.items():
            visible = np.zeros((self.height, self.width), bool)
            xa, ya = int(max(0, np.floor(box[0]))), int(max(0, np.floor(box[1])))
            xb, yb = int(min(self.width, np.ceil(box[2]))), int(min(self.height, np.ceil(box[3])))
            if xb > xa and yb > ya:
                visible[ya:yb, xa:xb] = owner[ya:yb, xa:xb] == k
            truths.append(GroundTruthFace(k, box, visible))
        return frame, truths

    def frames(self) -> Iterator[tuple[np.ndarray, list[GroundTruthFace]]]:
        for t in range(self.num_frames):
            yield self.render(t)

    def _scale(self, spec: FaceSpec, face_h: float) -> float:
        fb = spec.sprite.face_box
        return face_h / float(fb[3] - fb[1])

    def _sprite_rect(self, spec: FaceSpec, place) -> tuple[int, int, int, int]:
        cx, cy, face_h = place
        s = self._scale(spec, face_h)
        fb = spec.sprite.face_box
        h, w = spec.sprite.rgb.shape[:2]
        # Sprite origin so that the face box centre lands on (cx, cy).
        ox = cx - s * (fb[0] + fb[2]) / 2
        oy = cy - s * (fb[1] + fb[3]) / 2
        return int(round(ox)), int(round(oy)), int(round(ox)) + max(1, int(round(w * s))), int(round(oy)) + max(1, int(round(h * s)))

    def _paste(self, frame, owner, k, spec: FaceSpec, place) -> np.ndarray | None:
        x0, y0, x1, y1 = self._sprite_rect(spec, place)
        sw, sh = x1 - x0, y1 - y0
        xa, ya, xb, yb = max(0, x0), max(0, y0), min(self.width, x1), min(self.height, y1)
        if xb <= xa or yb <= ya:
            return None
        interp = cv2.INTER_AREA if sw < spec.sprite.rgb.shape[1] else cv2.INTER_LINEAR
        rgb = cv2.resize(spec.sprite.rgb, (sw, sh), interpolation=interp)[ya - y0 : yb - y0, xa - x0 : xb - x0]
        alpha = cv2.resize(spec.sprite.alpha, (sw, sh), interpolation=cv2.INTER_LINEAR)[ya - y0 : yb - y0, xa - x0 : xb - x0]
        region = frame[ya:yb, xa:xb].astype(np.float32)
        frame[ya:yb, xa:xb] = np.clip(region * (1 - alpha[..., None]) + rgb.astype(np.float32) * alpha[..., None] + 0.5, 0, 255).astype(np.uint8)
        owner[ya:yb, xa:xb][alpha > 0.5] = k
        s = sw / spec.sprite.rgb.shape[1]
        fb = spec.sprite.face_box
        return np.array([x0 + fb[0] * s, y0 + fb[1] * s, x0 + fb[2] * s, y0 + fb[3] * s], np.float32)


def linear(p0, p1, n: int, size: float | Callable[[int], float], jitter: float = 0.0, seed: int = 0) -> Script:
    """Move from p0 to p1 over n frames (then stay), optional Gaussian jitter (pixels)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, jitter, size=(10_000, 2)) if jitter else np.zeros((10_000, 2))

    def script(t: int):
        a = min(1.0, t / max(1, n - 1))
        s = size(t) if callable(size) else size
        return (p0[0] + (p1[0] - p0[0]) * a + noise[t, 0], p0[1] + (p1[1] - p0[1]) * a + noise[t, 1], s)

    return script


def sine_audio(duration: float, rate: int = 48000, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """A sine wave as (channels, samples) float32 in [-0.5, 0.5]."""
    t = np.arange(int(round(duration * rate))) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


_AUDIO_FOR_SUFFIX = {".mp4": "aac", ".m4v": "aac", ".mov": "pcm_s16le", ".mkv": "pcm_s16le", ".webm": "libopus", ".avi": "pcm_s16le"}
_VIDEO_FOR_SUFFIX = {".webm": "libvpx-vp9", ".avi": "mpeg4"}


def write_clip(
    path: Path,
    frames: Iterator[np.ndarray],
    fps: Fraction,
    num_frames: int,
    *,
    audio: bool = True,
    audio_codec: str | None = None,
    metadata: dict | None = None,
    crf: int = 16,
) -> Path:
    """Encode frames (and a sine-wave audio track as long as the video) into ``path``."""
    import av

    suffix = path.suffix.lower()
    with av.open(str(path), "w") as out:
        if metadata:
            out.metadata.update(metadata)
        codec = _VIDEO_FOR_SUFFIX.get(suffix, "libx264")
        vs = out.add_stream(codec, rate=fps)
        vs.pix_fmt = "yuv420p"
        if codec == "libx264":
            vs.options = {"crf": str(crf), "preset": "ultrafast"}
        elif codec == "libvpx-vp9":
            vs.options = {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        else:
            vs.bit_rate = 4_000_000
        a_stream = None
        if audio:
            acodec = audio_codec or _AUDIO_FOR_SUFFIX[suffix]
            rate = 48000
            a_stream = out.add_stream(acodec, rate=rate)
            a_stream.layout = "mono"
        first = True
        for i, rgb in enumerate(frames):
            if first:
                vs.height, vs.width = rgb.shape[:2]
                first = False
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
        if a_stream is not None:
            samples = sine_audio(num_frames / float(fps), rate=48000)
            fmt = a_stream.format.name
            chunk = a_stream.codec_context.frame_size or 1024
            resampler = av.AudioResampler(format=fmt, layout="mono", rate=48000)
            for start in range(0, samples.shape[1], chunk):
                part = np.ascontiguousarray(samples[:, start : start + chunk])
                af = av.AudioFrame.from_ndarray(part, format="fltp", layout="mono")
                af.sample_rate = 48000
                af.pts = start
                for rs in resampler.resample(af):
                    out.mux(a_stream.encode(rs))
            out.mux(a_stream.encode(None))
    return path
