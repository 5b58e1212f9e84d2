"""Video part of `identitydp anonymize`: options, output paths, progress bar, ledger.

``identitydp anonymize clip.mp4 -o out.mp4 [--method ...] [--no-audio] [--detect-every N]
[--max-missing K] [--lookback L]``. Video files given as inputs are routed here by
``_cli_anonymize``; images keep their own path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ._cli_types import bounded_int
from .errors import IdentityDPError

#: Upper bound of the frame counts --detect-every, --max-missing and --lookback.
MAX_FRAMES_OPTION = 10_000


def add_video_arguments(parser) -> None:
    g = parser.add_argument_group("video (MP4, MOV, MKV, WebM, AVI inputs)")
    g.add_argument("--no-audio", action="store_true", help="drop the audio (default: copy it unchanged)")
    g.add_argument("--detect-every", type=bounded_int(1, MAX_FRAMES_OPTION), default=1, metavar="N", help="run the detector on every N-th frame and track in between (default 1)")
    g.add_argument(
        "--max-missing",
        type=bounded_int(0, MAX_FRAMES_OPTION),
        default=12,
        metavar="K",
        help="keep anonymizing a face for K frames after the detector last saw it, at its predicted position (default 12)",
    )
    g.add_argument(
        "--lookback",
        type=bounded_int(0, MAX_FRAMES_OPTION),
        metavar="L",
        help="also anonymize a face in the L frames before its first detection (default max(4, N))",
    )


def split_videos(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Separate video files from the other inputs (images, folders)."""
    from .video import is_video_path

    videos: list[Path] = []
    rest: list[str] = []
    for item in inputs:
        if Path(item).is_file() and is_video_path(item):
            videos.append(Path(item))
        else:
            rest.append(item)
    return videos, rest


def _plan(args, videos: list[Path], single: bool) -> list[tuple[Path, Path]]:
    from .video import is_video_path

    if args.output is None:
        return [(v, v.with_name(f"{v.stem}.anonymized{v.suffix}")) for v in videos]
    out = Path(args.output)
    if single and is_video_path(out):
        return [(videos[0], out)]
    return [(v, out / v.name) for v in videos]


def planned_paths(args, videos: list[Path], *, single: bool) -> tuple[list[Path], list[Path]]:
    """(inputs, outputs incl. ledgers) that anonymizing ``videos`` will read and write."""
    if not videos:
        return [], []
    plan = _plan(args, videos, single)
    outputs = [dst for _, dst in plan]
    if args.method in ("identitydp", "dp-pix"):
        outputs += [dst.with_name(f"{dst.stem}.ledger.json") for _, dst in plan]
    return [src for src, _ in plan], outputs


def _track_key(source: Path, digest: str, track_id: int) -> str:
    """Ledger key of one face track: file name, content hash (a renamed copy is the same input), track."""
    return f"{source.name}@{digest}#track{track_id}"


def _file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _load_ledger(path: Path, budget):
    from .privacy.ledger import PrivacyLedger

    # Continue an existing ledger: anonymizing the same clip again releases its faces again.
    ledger = PrivacyLedger.load(path) if path.exists() else PrivacyLedger()
    ledger.budget = budget
    return ledger


def run_videos(args, videos: list[Path], *, single: bool) -> tuple[int, list[dict]]:
    """Anonymize every video; returns (exit code, per-video JSON reports)."""
    from tqdm import tqdm

    from ._cli_anonymize import _method_params
    from .detect import CenterFaceDetector
    from .pipeline import Anonymizer
    from .video import anonymize_video, probe_video

    if args.detect_every < 1:
        print("identitydp: --detect-every must be >= 1", file=sys.stderr)
        return 2, []
    if args.max_missing < 0 or (args.lookback is not None and args.lookback < 0):
        print("identitydp: --max-missing and --lookback must be >= 0", file=sys.stderr)
        return 2, []
    plan = _plan(args, videos, single)
    protected = {src.resolve() for src, _ in plan}
    # Video frames are rarely tight face crops: skip the detector's padded pass (≈5× faster).
    detector = CenterFaceDetector(threshold=args.threshold, pad_tight=False)
    anonymizer = Anonymizer(args.method, threshold=args.threshold, seed=args.seed, detector=detector, **_method_params(args))
    dp = args.method in ("identitydp", "dp-pix")
    if args.budget is not None and not dp:
        print(f"identitydp: --budget applies to dp-pix and identitydp, not {args.method}", file=sys.stderr)
        return 2, []
    reports, failures = [], []
    for src, dst in plan:
        ledger_path = dst.with_name(f"{dst.stem}.ledger.json")
        ledger = digest = None
        try:
            if dp:
                ledger = _load_ledger(ledger_path, args.budget)
                digest = _file_digest(src)

            def charge(track, src=src, ledger=ledger, digest=digest):
                # Charged as each track ends, before the output is committed: a budget refusal
                # aborts the run and leaves no output behind.
                if ledger is None or not track.privacy or not track.releases:
                    return
                ledger.record(_track_key(src, digest, track.id), **{**track.privacy, "count": track.releases, "frames": track.frame_range})

            total = probe_video(src).expected_frames or None
            with tqdm(total=total, unit="frame", desc=src.name, disable=args.quiet, file=sys.stderr, dynamic_ncols=True) as bar:
                report = anonymize_video(
                    anonymizer,
                    src,
                    dst,
                    audio=not args.no_audio,
                    detect_every=args.detect_every,
                    max_missing=args.max_missing,
                    lookback=args.lookback,
                    overwrite=args.overwrite,
                    protected=protected,
                    progress=lambda n, bar=bar: bar.update(n - bar.n),
                    on_track=charge,
                )
        except IdentityDPError as exc:
            failures.append((src, str(exc)))
            continue
        entry = report.to_json()
        if ledger is not None:
            data = ledger.to_dict()
            # The stream's track list (frame ranges, releases per track) goes with the ledger.
            data["video"] = {"source": str(src), "output": str(dst), **report.ledger}
            ledger_path.write_text(json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
            entry["ledger"] = str(ledger_path)
        reports.append(entry)
        if not args.quiet:
            audio = ", audio " + "/".join(report.audio) if report.audio else (", no audio" if args.no_audio else "")
            print(
                f"wrote {dst}: {report.frames} frames, {len(report.tracks)} face tracks, "
                f"{report.masked} faces masked solid{audio}; {report.fps:.1f} frames/s"
            )
            if "ledger" in entry:
                print(f"privacy ledger: {entry['ledger']}")
    for src, err in failures:
        print(f"failed: {err}", file=sys.stderr)
    return (1 if failures else 0), reports
