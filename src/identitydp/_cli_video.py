"""Video options of `identitydp anonymize` and `identitydp batch`.

``identitydp anonymize clip.mp4 -o out.mp4 [--method ...] [--no-audio] [--detect-every N]
[--max-missing K] [--lookback L] [--render-every R] [--fast]``. Videos and images go through the same job layer
(:mod:`identitydp.jobs`); these options become its :class:`~identitydp.jobs.VideoOptions`.
"""

from __future__ import annotations

from ._cli_types import bounded_int

#: Upper bound of the frame counts --detect-every, --max-missing, --lookback and --render-every.
MAX_FRAMES_OPTION = 10_000
#: What --fast sets (docs/video.md#speed: the frames/s this buys and the expression delay it costs).
FAST_DETECT_EVERY = 3
FAST_RENDER_EVERY = 3


def add_video_arguments(parser) -> None:
    g = parser.add_argument_group("video (MP4, MOV, MKV, WebM, AVI inputs)")
    g.add_argument("--no-audio", action="store_true", help="drop the audio (default: copy it unchanged)")
    g.add_argument("--detect-every", type=bounded_int(1, MAX_FRAMES_OPTION), metavar="N",
                   help="run the detector on every N-th frame and track in between (default 1; 3 with --fast)")
    g.add_argument("--fast", action="store_true",
                   help=f"video preset: --detect-every {FAST_DETECT_EVERY} and, for identitydp, --render-every {FAST_RENDER_EVERY} "
                        "(an explicit value wins); add --min-face PX when no face is smaller than PX "
                        "(docs/video.md#speed has the frames/s of each)")
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
    g.add_argument(
        "--render-every",
        type=bounded_int(1, MAX_FRAMES_OPTION),
        metavar="R",
        help="identitydp: render each tracked face on every R-th frame and move its last rendering with the face in "
             "between (R times less rendering; expression follows up to R-1 frames late; default 1; 3 with --fast)",
    )
