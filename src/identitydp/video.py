"""Video input and output through PyAV, and whole-file video anonymization.

:func:`anonymize_video` reads a clip (MP4, MOV, MKV, WebM, AVI, …), anonymizes every frame with
:meth:`identitydp.pipeline.Anonymizer.stream` (tracking, bridged misses, one identity per track)
and writes a new file:

* same resolution (as displayed: a rotation flag is applied to the pixels, since no metadata is
  copied), same frame count and frame timing (each frame keeps its timestamp, so frame rate and
  duration are kept);
* audio streams copied packet by packet (no re-encoding) when the output container accepts the
  codec, else re-encoded to the container's usual codec (e.g. AAC → Opus for WebM); or dropped
  with ``audio=False``;
* no metadata: container and stream tags (title, GPS location, creation time, device), chapters,
  subtitle and data streams are not copied;
* frames are decoded, processed and encoded one at a time (constant memory, whatever the length);
* written to a temporary file in the target folder and renamed when complete; the input is never
  overwritten.

PyAV (``pip install av``, the ``video`` extra) is imported lazily.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ImageReadError, ImageWriteError

if TYPE_CHECKING:
    from .pipeline import Anonymizer
    from .stream import FrameReport
    from .track import Track

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"}

# Encoder per output suffix: (codec, pixel format, options). Quality is set high on purpose:
# anonymization should not also be a lossy re-compression of everything else in the frame.
_VIDEO_ENCODERS = {
    ".mp4": ("libx264", "yuv420p", {"crf": "18", "preset": "veryfast"}),
    ".m4v": ("libx264", "yuv420p", {"crf": "18", "preset": "veryfast"}),
    ".mov": ("libx264", "yuv420p", {"crf": "18", "preset": "veryfast"}),
    ".mkv": ("libx264", "yuv420p", {"crf": "18", "preset": "veryfast"}),
    ".webm": ("libvpx-vp9", "yuv420p", {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}),
    ".avi": ("mpeg4", "yuv420p", {}),
}
# Audio codecs copied into these containers (others are re-encoded): what common players read.
# Elsewhere the muxer's own list decides (MKV takes anything).
_AUDIO_COPY_ONLY = {
    ".mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
    ".m4v": {"aac", "mp3", "ac3", "eac3", "alac"},
}
# Audio codec used when the source's codec cannot be copied into the output container.
_AUDIO_FALLBACK = {".webm": "libopus", ".avi": "pcm_s16le"}
_AUDIO_FALLBACK_DEFAULT = "aac"


class VideoReadError(ImageReadError):
    """A video could not be opened or decoded (the message names the file)."""


class VideoWriteError(ImageWriteError):
    """A video could not be written (would overwrite an input, unknown suffix, encoder error)."""


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _import_av():
    try:
        import av
    except ImportError as exc:
        raise VideoReadError("video support needs PyAV: pip install 'identitydp[video]' (or pip install av)") from exc
    return av


@dataclass
class VideoInfo:
    """What a video file holds.

    Attributes:
        path: the file.
        width, height: frame size in pixels as displayed (rotation applied).
        fps: average frame rate (frames per second) as an exact fraction.
        num_frames: frame count from the container header (0 when unknown; an estimate for some formats).
        duration: video stream duration in seconds (0 when unknown).
        rotation: display rotation in degrees (counter-clockwise) the file asks for.
        video_codec: codec name of the video stream.
        audio_codecs: codec name of every audio stream.
        audio_durations: duration of every audio stream in seconds (from the header; None when unknown).
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    num_frames: int
    duration: float
    rotation: int
    video_codec: str
    audio_codecs: list[str] = field(default_factory=list)
    audio_durations: list[float | None] = field(default_factory=list)

    @property
    def expected_frames(self) -> int:
        """Best guess of the frame count (header count, else duration × fps)."""
        if self.num_frames > 0:
            return self.num_frames
        return int(round(self.duration * float(self.fps))) if self.duration > 0 else 0

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "width": self.width,
            "height": self.height,
            "fps": float(self.fps),
            "num_frames": self.num_frames,
            "duration": round(self.duration, 4),
            "video_codec": self.video_codec,
            "audio_codecs": self.audio_codecs,
        }


def _stream_duration(stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def _frame_rate(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and rate > 0:
            return Fraction(rate)
    return Fraction(25)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's header (and its first frame, for the display rotation).

    Raises:
        VideoReadError: missing file, not a video, or no video stream.
    """
    av = _import_av()
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            vs = container.streams.video[0]
            width, height = vs.codec_context.width, vs.codec_context.height
            duration = _stream_duration(vs)
            if duration is None and container.duration is not None:
                duration = container.duration / 1_000_000
            rotation = 0
            for frame in container.decode(vs):
                rotation = _frame_rotation(frame)
                break
            if rotation % 180:
                width, height = height, width
            return VideoInfo(
                path=path,
                width=width,
                height=height,
                fps=_frame_rate(vs),
                num_frames=int(vs.frames or 0),
                duration=float(duration or 0.0),
                rotation=rotation,
                video_codec=vs.codec_context.name,
                audio_codecs=[a.codec_context.name for a in container.streams.audio],
                audio_durations=[_stream_duration(a) for a in container.streams.audio],
            )
    except av.FFmpegError as exc:
        raise VideoReadError(f"{path}: cannot read video ({exc})") from exc


def _frame_rotation(frame) -> int:
    """Counter-clockwise display rotation of a decoded frame, as a multiple of 90 degrees."""
    rotation = getattr(frame, "rotation", 0) or 0
    return int(round(rotation / 90.0)) * 90 % 360


def _to_rgb(frame, rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    if rotation:
        # np.rot90 turns counter-clockwise, as the display matrix asks.
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode a video's frames one at a time as (H, W, 3) uint8 RGB (display rotation applied).

    The file stays open until the iterator is exhausted or closed.
    """
    av = _import_av()
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(f"{path}: no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream")
            vs = container.streams.video[0]
            vs.thread_type = "AUTO"
            for frame in container.decode(vs):
                yield _to_rgb(frame, _frame_rotation(frame))
    except av.FFmpegError as exc:
        raise VideoReadError(f"{path}: cannot decode video ({exc})") from exc


@dataclass
class VideoReport:
    """What :func:`anonymize_video` did.

    Attributes:
        source, output: input and output files.
        info: the input's :class:`VideoInfo`.
        frames: frames written.
        faces: faces anonymized, summed over frames.
        masked: faces masked solid because the method failed on them (fail closed).
        tracks: every face track, with its frame range and privacy release.
        audio: per audio stream ``"copied"`` or ``"re-encoded to CODEC"`` (empty with no audio).
        seconds: wall time per stage, summed over frames (detect, track, anonymize, decode_encode) and the
            total; detection runs in its own thread, overlapped with the others, so the stages can add up
            to more than the total.
        ledger: the track list / privacy summary of the stream (see ``AnonymizedStream.ledger_json``).
        frame_reports: per-frame reports, kept only with ``keep_frame_reports=True``.
    """

    source: Path
    output: Path
    info: VideoInfo
    frames: int = 0
    faces: int = 0
    masked: int = 0
    tracks: list["Track"] = field(default_factory=list)
    audio: list[str] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    ledger: dict = field(default_factory=dict)
    frame_reports: list["FrameReport"] | None = None

    @property
    def fps(self) -> float:
        """Processing speed in frames per second of wall time."""
        total = self.seconds.get("total", 0.0)
        return self.frames / total if total > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "source": str(self.source),
            "output": str(self.output),
            "input": self.info.to_json(),
            "frames": self.frames,
            "faces": self.faces,
            "masked": self.masked,
            "audio": self.audio,
            "tracks": [t.to_json() for t in self.tracks],
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "processing_fps": round(self.fps, 2),
        }


class _VideoWriter:
    """Encode RGB frames and mux copied audio packets into a temporary file, then rename it."""

    def __init__(self, av, target: Path, in_container, in_video, width: int, height: int, *, audio: bool, threads: int) -> None:
        self.av = av
        self.target = target
        suffix = target.suffix.lower()
        fd, tmp = tempfile.mkstemp(prefix=f".identitydp-{os.getpid()}-", suffix=suffix, dir=target.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.audio_status: list[str] = []
        self._last_ticks = -(2**62)
        self._audio_map: dict[int, tuple[object, object | None]] = {}
        try:
            self.container = av.open(str(self.tmp), mode="w")
            codec, pix_fmt, options = _VIDEO_ENCODERS[suffix]
            rate = _frame_rate(in_video)
            self.video = self.container.add_stream(codec, rate=rate)
            self.video.width, self.video.height = width, height
            if codec == "libx264" and (width % 2 or height % 2):
                pix_fmt = "yuv444p"  # 4:2:0 needs even sides; 4:4:4 keeps odd sizes exact
            self.video.pix_fmt = pix_fmt
            if codec == "mpeg4":
                # mpeg4 has no CRF: give it a generous bit rate (~0.25 bit per pixel).
                self.video.bit_rate = int(max(2e6, 0.25 * width * height * float(rate)))
            self.video.options = dict(options)
            if threads:
                self.video.codec_context.thread_count = threads
            # One tick per frame at the nominal rate; each frame's timestamp is rescaled onto it.
            self.time_base = Fraction(1, 1) / rate
            self.video.codec_context.time_base = self.time_base
            self.video.time_base = self.time_base
            if audio:
                for in_audio in in_container.streams.audio:
                    self._add_audio(in_audio)
        except BaseException:
            self.abort()
            raise

    def _add_audio(self, in_audio) -> None:
        av = self.av
        name = in_audio.codec_context.name
        allowed = _AUDIO_COPY_ONLY.get(self.target.suffix.lower())
        if name in self.container.supported_codecs and (allowed is None or name in allowed):
            out = self.container.add_stream_from_template(in_audio)
            # The template copies codec parameters; tags (language, handler, title) must not follow.
            for key in list(out.metadata):
                del out.metadata[key]
            self._audio_map[in_audio.index] = (out, None)
            self.audio_status.append("copied")
            return
        codec = _AUDIO_FALLBACK.get(self.target.suffix.lower(), _AUDIO_FALLBACK_DEFAULT)
        rate = in_audio.codec_context.sample_rate or 48000
        if codec == "libopus" and rate not in (8000, 12000, 16000, 24000, 48000):
            rate = 48000
        out = self.container.add_stream(codec, rate=rate)
        layout = in_audio.codec_context.layout
        if layout is not None and getattr(layout, "nb_channels", 0) in (1, 2):
            out.layout = layout.name
        else:
            out.layout = "stereo"
        self._audio_map[in_audio.index] = (out, av.AudioResampler(format=out.format.name, layout=out.layout.name, rate=rate))
        self.audio_status.append(f"re-encoded to {codec} ({name} is not kept in {self.target.suffix})")

    def mux_audio(self, packet) -> None:
        entry = self._audio_map.get(packet.stream.index)
        if entry is None:
            return
        out, resampler = entry
        if resampler is None:
            if packet.dts is None:  # demuxer flush packet
                return
            packet.stream = out
            self.container.mux(packet)
            return
        for frame in packet.decode():
            for rs in resampler.resample(frame):
                rs.pts = None  # let the encoder number the resampled samples
                self.container.mux(out.encode(rs))

    def write(self, rgb: np.ndarray, pts: Fraction | None, index: int) -> None:
        """Encode one frame; ``pts`` is its presentation time in seconds (None: use the index)."""
        frame = self.av.VideoFrame.from_ndarray(rgb, format="rgb24")
        ticks = index if pts is None else int(round(pts / self.time_base))
        # Timestamps must increase strictly; a variable-rate source may round two frames together.
        ticks = max(ticks, self._last_ticks + 1)
        self._last_ticks = ticks
        frame.pts = ticks
        frame.time_base = self.time_base
        self.container.mux(self.video.encode(frame))

    def finish(self, flush_audio: bool = True, before_commit=None) -> Path:
        """Flush the encoders, close the file and move it to the target (``before_commit(tmp)`` first)."""
        try:
            self.container.mux(self.video.encode(None))
            for out, resampler in self._audio_map.values():
                if resampler is not None:
                    for rs in resampler.resample(None):
                        rs.pts = None
                        self.container.mux(out.encode(rs))
                    self.container.mux(out.encode(None))
            self.container.close()
        except BaseException:
            self.abort()
            raise
        try:
            from .io import output_mode

            os.chmod(self.tmp, output_mode())
            if before_commit is not None:
                before_commit(self.tmp)
            os.replace(self.tmp, self.target)
        except OSError as exc:
            self.abort()
            raise VideoWriteError(f"{self.target}: cannot write ({exc})") from exc
        return self.target

    def abort(self) -> None:
        container = getattr(self, "container", None)
        if container is not None:
            try:
                container.close()
            except Exception:  # noqa: BLE001 - already failing; the temp file is removed below
                pass
        if self.tmp.exists():
            self.tmp.unlink()


def _check_output(source: Path, output: Path, overwrite: bool, protected: set[Path] | None) -> Path:
    if output.suffix.lower() not in _VIDEO_ENCODERS:
        raise VideoWriteError(f"{output}: unknown video suffix (use one of {', '.join(sorted(VIDEO_SUFFIXES))})")
    target = output.resolve()
    guard = {source.resolve()} | (protected or set())
    if target in guard or (target.exists() and source.exists() and os.path.samefile(target, source)):
        raise VideoWriteError(f"{output}: refusing to overwrite an input video")
    if target.exists() and not overwrite:
        raise VideoWriteError(f"{output}: already exists (use --overwrite to replace it)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VideoWriteError(f"{output}: cannot create its folder ({exc})") from exc
    return target


def anonymize_video(
    anonymizer: "Anonymizer",
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    audio: bool = True,
    detect_every: int = 1,
    max_missing: int = 12,
    lookback: int | None = None,
    overwrite: bool = False,
    protected: set[Path] | None = None,
    threads: int = 0,
    progress: Callable[[int], None] | None = None,
    on_track: Callable[["Track"], None] | None = None,
    keep_frame_reports: bool = False,
    before_anonymize: Callable[[int, list], None] | None = None,
    before_commit: Callable[[Path], None] | None = None,
) -> VideoReport:
    """Anonymize every face of a video file and write the result.

    Args:
        anonymizer: the pipeline (detector + method).
        source: input video (MP4, MOV, MKV, WebM, AVI).
        output: output video; its suffix picks the container and encoder.
        audio: copy the audio streams (``False`` drops them).
        detect_every, max_missing, lookback: tracking options, see :meth:`Anonymizer.stream`.
        overwrite: replace an existing output (never an input).
        protected: further resolved paths that must not be written.
        threads: encoder threads (0 = the encoder's default).
        progress: called with the number of frames written after each frame.
        on_track: called with each finished track, before the output file is committed (raise
            there, e.g. a budget error, to abort the run and leave no output).
        keep_frame_reports: keep every frame's :class:`FrameReport` in the result (tests, tools;
            memory grows with the length).
        before_anonymize: ``callable(frame_index, faces)`` before each frame's faces are anonymized
            (see :class:`~identitydp.stream.AnonymizedStream`); the job layer charges the ledger there.
        before_commit: ``callable(tmp_path)`` on the complete temporary output before its rename.

    Returns:
        A :class:`VideoReport`.

    Raises:
        VideoReadError, VideoWriteError: unreadable input, bad output path, codec failure.
    """
    av = _import_av()
    source = Path(source)
    output = Path(output)
    info = probe_video(source)
    target = _check_output(source, output, overwrite, protected)
    report = VideoReport(source=source, output=output, info=info)
    if keep_frame_reports:
        report.frame_reports = []
    t_start = time.perf_counter()
    stage = {"detect": 0.0, "track": 0.0, "anonymize": 0.0}
    try:
        in_container = av.open(str(source))
    except av.FFmpegError as exc:
        raise VideoReadError(f"{source}: cannot read video ({exc})") from exc
    writer = None
    try:
        in_video = in_container.streams.video[0]
        in_video.thread_type = "AUTO"
        streams = [in_video, *in_container.streams.audio] if audio else [in_video]
        writer = _VideoWriter(av, target, in_container, in_video, info.width, info.height, audio=audio, threads=threads)
        report.audio = list(writer.audio_status)
        times: deque[Fraction | None] = deque()

        codec_seconds = [0.0]  # decoding (with the audio muxing) and encoding, measured where they run

        def frames() -> Iterator[np.ndarray]:
            # One demux loop for video and audio: audio packets are muxed as they come, so the
            # output is interleaved and nothing accumulates.
            t0 = time.perf_counter()
            for packet in in_container.demux(*streams):
                if packet.stream.type == "audio":
                    writer.mux_audio(packet)
                    continue
                for frame in packet.decode():
                    times.append(frame.pts * frame.time_base if frame.pts is not None and frame.time_base else None)
                    rgb = _to_rgb(frame, _frame_rotation(frame))
                    if rgb.shape[:2] != (info.height, info.width):
                        # One output stream has one size: refuse rather than stretch or crop faces.
                        raise VideoReadError(
                            f"{source}: the frame size changes mid-stream (frame {len(times) - 1} is "
                            f"{rgb.shape[1]}x{rgb.shape[0]}, the video is {info.width}x{info.height}); re-encode it at "
                            f"one size first, e.g. ffmpeg -i IN -vf scale={info.width}:{info.height} OUT.mp4"
                        )
                    codec_seconds[0] += time.perf_counter() - t0
                    yield rgb
                    t0 = time.perf_counter()
            codec_seconds[0] += time.perf_counter() - t0

        stream = anonymizer.stream(frames(), detect_every=detect_every, max_missing=max_missing, lookback=lookback,
                                   before_anonymize=before_anonymize)
        finished = 0
        for out, frame_report in stream:
            if out.shape[1] != info.width or out.shape[0] != info.height:
                raise VideoReadError(f"{source}: frame {frame_report.index} is {out.shape[1]}x{out.shape[0]}, not {info.width}x{info.height}")
            t0 = time.perf_counter()
            writer.write(out, times.popleft(), frame_report.index)
            codec_seconds[0] += time.perf_counter() - t0
            report.frames += 1
            report.faces += len(frame_report.faces)
            report.masked += frame_report.num_masked
            for key in stage:
                stage[key] += frame_report.seconds.get(key, 0.0)
            if keep_frame_reports:
                report.frame_reports.append(frame_report)
            if on_track is not None:
                for track in stream.tracks[finished:]:
                    on_track(track)
                finished = len(stream.tracks)
            if progress is not None:
                progress(report.frames)
        if on_track is not None:
            for track in stream.tracks[finished:]:
                on_track(track)
        if report.frames == 0:
            raise VideoReadError(f"{source}: no video frames could be decoded")
        report.tracks = stream.tracks
        report.ledger = stream.ledger_json()
        t0 = time.perf_counter()
        writer.finish(before_commit=before_commit)
        codec_seconds[0] += time.perf_counter() - t0
        writer = None
    except av.FFmpegError as exc:
        raise VideoWriteError(f"{source} -> {output}: video processing failed ({exc})") from exc
    finally:
        if writer is not None:
            writer.abort()
        in_container.close()
    report.seconds = {**stage, "total": time.perf_counter() - t_start}
    # Detection runs in its own thread, overlapped with the rest: stages may add up to more than total.
    report.seconds["decode_encode"] = codec_seconds[0]
    return report


def audio_duration(path: str | os.PathLike, stream_index: int = 0) -> float:
    """Duration in seconds of an audio stream, summed from its packets (exact, header-independent)."""
    av = _import_av()
    with av.open(str(path)) as container:
        if len(container.streams.audio) <= stream_index:
            return 0.0
        stream = container.streams.audio[stream_index]
        total = 0
        first = last = None
        for packet in container.demux(stream):
            if packet.dts is None:
                continue
            total += packet.duration or 0
            first = packet.pts if first is None else min(first, packet.pts)
            end = packet.pts + (packet.duration or 0)
            last = end if last is None else max(last, end)
        if first is None:
            return 0.0
        return float((last - first) * stream.time_base) if total == 0 else float(total * stream.time_base)


def count_frames(path: str | os.PathLike) -> tuple[int, list[float]]:
    """Decode-free frame count and the presentation times (seconds) of every video packet."""
    av = _import_av()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = sorted(
            float(p.pts * stream.time_base) for p in container.demux(stream) if p.pts is not None and p.size
        )
    return len(times), times


__all__ = [
    "VIDEO_SUFFIXES",
    "VideoInfo",
    "VideoReadError",
    "VideoReport",
    "VideoWriteError",
    "anonymize_video",
    "audio_duration",
    "count_frames",
    "is_video_path",
    "iter_frames",
    "probe_video",
]

