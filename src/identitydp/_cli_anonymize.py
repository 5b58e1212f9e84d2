"""`identitydp anonymize` and `identitydp detect`."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from ._cli_video import FAST_DETECT_EVERY, FAST_RENDER_EVERY, add_video_arguments
from ._cli_types import MAX_SEED, one_line, bounded_float, bounded_int, divisor_of, epsilon, path_text, positive_float
from .errors import IdentityDPError

METHOD_CHOICES = ["blur", "pixelate", "mask", "dp-pix", "identitydp"]
PROGRESS_MIN_IMAGES = 4
EXIT_ERROR = 3  # as identitydp.cli.EXIT_ERROR (not imported: the cli module imports this one)


#: Default of --max-megapixels: identitydp.io.MAX_PIXELS / 1e6 (not imported here: building the
#: parser must not load numpy and PIL; tests/test_cli_hardening.py checks the two agree).
DEFAULT_MAX_MEGAPIXELS = 150.0

#: Attributes --keep accepts (identitydp.privacy.keep.ATTRIBUTE_NAMES; not imported: building the
#: parser must not load numpy).
KEEPABLE = ("gender", "age")


def kept_attributes(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in KEEPABLE]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"give one or more of {', '.join(KEEPABLE)}, comma-separated, each once (got {text!r})")
    return names


#: Upper bound of --blocks (more cells than this is no longer pixelation).
MAX_BLOCKS = 512
#: DP-Pix canonical grid side (identitydp.anonymizers.DPPixAnonymizer's default ``grid``).
DP_PIX_GRID = 64
#: Detector score threshold: (0, 1) as CenterFaceDetector takes it (a sigmoid score never reaches
#: 1, so 1 would silently find no face at all).
THRESHOLD = bounded_float(0, 1, low_open=True, high_open=True)

#: ε of identitydp when --epsilon is not given: the smallest ε of the evaluation, at which no
#: judge re-identifies more than 1 % of LFW's 1,680 people with the v2 renderer (docs/results/lfw-full-v2d).
DEFAULT_IDENTITYDP_EPSILON = 1.0

#: --privacy presets for identitydp: name -> (ε, what it measured on 300 LFW people with the default
#: v2 renderer, its default 2 shape modes and the default gender rule (from the context up to ε 16),
#: MobileFace rank-1 re-identification and FaceRes gender agreement; chance 0.3 %, solid mask 0.3 %,
#: ε = inf 26 %; docs/results/lfw300-knob-v2zw2, src/identitydp/weights/privacy_curve_keep_v2.json).
PRIVACY_PRESETS = {
    "strong": (1.0, "rank-1 1.3 %: a new identity, gender from the hair and clothes (81 %) (the default)"),
    "medium": (16.0, "rank-1 3.3 %: a look-alike, gender from the hair and clothes (82 %)"),
    "light": (64.0, "rank-1 10 %: close to the person, gender 88 %, age within 7 years"),
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "anonymize",
        help="anonymize the faces in images (files or folders) and videos",
        description="Detect every face and anonymize it. Outputs have all metadata stripped; inputs are never overwritten.",
    )
    p.add_argument("inputs", nargs="+", type=path_text, metavar="INPUT", help="image files or folders (searched recursively), or video files")
    p.add_argument(
        "-o",
        "--output",
        type=path_text,
        help="output file (one input) or folder (keeps the input tree); default: NAME.anonymized.EXT next to each input",
    )
    p.add_argument("--method", choices=METHOD_CHOICES, default="identitydp",
                   help="anonymization method (default: identitydp, the only one that keeps faces detectable at full privacy)")
    add_method_arguments(p)
    add_video_arguments(p)
    p.set_defaults(func=run_anonymize)

    d = subparsers.add_parser("detect", help="detect faces and print (or write) them as JSON")
    d.add_argument("inputs", nargs="+", type=path_text, metavar="INPUT", help="image files or folders")
    d.add_argument("--threshold", type=THRESHOLD, default=0.5, help="detection score threshold, in (0, 1) (default 0.5)")
    d.add_argument("-o", "--output", type=path_text, help="write the JSON here instead of printing it")
    d.set_defaults(func=run_detect)


def add_method_arguments(p) -> None:
    """Method, privacy, detection and output options shared by `anonymize` and `batch`."""
    p.add_argument("--privacy", choices=list(PRIVACY_PRESETS), metavar="LEVEL",
                   # argparse %-formats help texts: the measured percentages must be escaped.
                   help="identitydp: a named ε (measured on 300 LFW people, docs/privacy.md): " + "; ".join(
                       f"{name} = ε {eps:g}, {what}" for name, (eps, what) in PRIVACY_PRESETS.items()).replace("%", "%%"))
    p.add_argument("--epsilon", type=epsilon,
                   help=f"privacy parameter ε for dp-pix / identitydp (smaller = more private; identitydp default {DEFAULT_IDENTITYDP_EPSILON:g})")
    p.add_argument("--delta", type=bounded_float(0, 1, low_open=True, high_open=True), help="δ for the Gaussian mechanism (identitydp)")
    p.add_argument("--mechanism", choices=["laplace", "gaussian", "metric"], help="identitydp noise mechanism")
    p.add_argument(
        "--projection",
        action="store_true",
        help=argparse.SUPPRESS,  # the default now; kept so that old command lines still work
    )
    p.add_argument(
        "--sphere",
        action="store_true",
        help="identitydp: add the noise on the whole 128-d identity sphere instead of the public 16-d projection "
             "(the default). Far more noise per ε: every ε <= 16 gives a random identity, ε = inf the person back",
    )
    p.add_argument(
        "--geometry",
        action="store_true",
        help="identitydp with --renderer v1: warp the rendering onto the original's 68 landmarks (keeps pose and "
             "expression closer, but face shape carries identity, and dlib's 68-point model is for non-commercial use "
             "only); off by default",
    )
    p.add_argument("--keep", type=kept_attributes, metavar="ATTRS",
                   help="identitydp: release these attributes of the identity as they are, NOT private (gender, age, or "
                        "gender,age); the noise goes on the rest of the identity among faces with these values (with --sphere: on "
                        "the rest's unit sphere); each face's kept values go to the ledger")
    p.add_argument("--gender-from-context", action=argparse.BooleanOptionalAction, default=None,
                   help="identitydp with the v2 renderer: give the new face the gender that the hair, ears, neck and clothes "
                        "around it suggest (read by a small network that never sees the face), instead of a random one; "
                        "random draws that disagree with the context tend to render with blotchy skin. Stays ε-DP (the "
                        "context is published unchanged anyway). Default: on up to ε 16 with the default mechanism and "
                        "nothing kept (gender agreement 57 → 78 %% at ε 1 on 300 LFW people, re-identification unchanged), "
                        "off from ε 64 on, where the identity keeps gender better (privacy explain shows both); "
                        "--no-gender-from-context draws it with the rest; not with --keep")
    p.add_argument("--shape-modes", type=bounded_int(1, 64), metavar="K",
                   help="identitydp with the v2 renderer: how much face geometry the renderer gets, as the K leading modes "
                        "of a public shape model (default 2: head pose and face length; 4 adds jaw width and the mouth, "
                        "better landmarks and expression, but they identify: MobileFace accepted 3.5 %% of ε = 1 outputs on "
                        "full LFW with 4, 1.2 %% with 2). Released as they are, not private")
    p.add_argument("--sharpen", type=bounded_float(0, 2), metavar="AMOUNT",
                   help="identitydp with the v2 renderer: unsharp-mask amount on the new face where its 128-px rendering "
                        "is enlarged into the photo (default 0.35: on 300 LFW people the face's fine-detail energy goes from "
                        "0.83 to 0.96 of the photo's at ε 1, realism and privacy figures unchanged; 0 turns it off)")
    p.add_argument("--precision", choices=["auto", "int8", "fp32"],
                   help="--renderer v1 arithmetic on the CPU: int8 convolutions (auto, the default: ~1.4x faster on a VNNI CPU, "
                        "renderings ~2 levels of 255 from fp32, same evaluation figures) or fp32 (v2 always runs in fp32)")
    p.add_argument("--renderer", choices=["v1", "v2"],
                   help="identitydp renderer: v2 (the default: an inpainting renderer that never sees the inner face, "
                        "docs/generator_card.md) or v1 (the first AEI-Net generator: it reads the original face, "
                        "docs/privacy.md; softer, less realistic by the independent judges' Fréchet distance)")
    p.add_argument("--no-geometry", action="store_true", help=argparse.SUPPRESS)  # the default since 0.1; kept for old scripts
    p.add_argument("--sigma", type=bounded_float(0, 1, low_open=True), help="blur σ as a fraction of the face size, in (0, 1] (default 0.1)")
    p.add_argument("--blocks", type=bounded_int(1, MAX_BLOCKS), help=f"pixelate: cells across the face, 1..{MAX_BLOCKS} (default 8)")
    p.add_argument("--block", type=divisor_of(DP_PIX_GRID), help=f"dp-pix: block side b in canonical pixels, a divisor of {DP_PIX_GRID} (default 8)")
    p.add_argument("--m", type=bounded_int(1, DP_PIX_GRID**2), help="dp-pix: pixels that may differ between neighbours (default 16)")
    p.add_argument("--threshold", type=THRESHOLD, default=0.5, help="face detection score threshold, in (0, 1) (default 0.5)")
    p.add_argument("--paranoid", action="store_true",
                   help="also mask solid the possible faces the detector is unsure of (score between 0.25 and --threshold); "
                        "without it they are left as they are and counted in the summary; photos only")
    p.add_argument("--min-face", type=bounded_int(8, 10_000), metavar="PX",
                   help="the smallest face to find, in pixels: detection runs on a copy scaled so that such a face is still "
                        "found, cheaper on large frames (720p video with --min-face 40: about a third of the detector's "
                        "time) and blind to smaller faces (default: full resolution, faces down to ~20 px)")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED), help="seed for a reproducible run (experiments only; default: OS randomness)")
    p.add_argument("--budget", type=positive_float(),
                   help="refuse to spend more than this ε on any one face, over all runs (dp-pix, identitydp); "
                        "stored in the ledger: later runs keep it and cannot raise it")
    p.add_argument("--ledger", type=path_text,
                   help="privacy ledger file (default: $IDENTITYDP_LEDGER or ~/.local/share/identitydp/ledger.sqlite; "
                        "one per user, whatever -o is)")
    p.add_argument("--exempt", type=path_text, metavar="DIR",
                   help="reference photos of people who consent (DIR/name.jpg or DIR/name/*.jpg): their faces are kept "
                        "when they match strictly (LFW false-accept rate <= 0.01 %%); photos only")
    p.add_argument("--max-megapixels", type=bounded_float(1, 10_000), default=DEFAULT_MAX_MEGAPIXELS,
                   help=f"refuse images larger than this (default {DEFAULT_MAX_MEGAPIXELS:.0f}: a 3-channel copy is 3 bytes a "
                        "pixel, and the limit stops decompression bombs); raise it for huge scans")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the inputs)")
    p.add_argument("--report", type=path_text, help="write a JSON report of every image and face to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def _method_params(args) -> dict:
    params: dict = {}
    if args.method == "blur":
        params["sigma"] = args.sigma
    elif args.method == "pixelate":
        params["blocks"] = args.blocks
    elif args.method == "dp-pix":
        params.update(epsilon=args.epsilon, block=args.block, m=args.m)
    elif args.method == "identitydp":
        render_every = getattr(args, "render_every", None)
        if render_every is None and getattr(args, "fast", False):
            render_every = FAST_RENDER_EVERY
        params.update(epsilon=args.epsilon, mechanism=args.mechanism, delta=args.delta, projection=False if args.sphere else None,
                      geometry=True if args.geometry and not args.no_geometry else None, keep=args.keep,
                      render_every=render_every, precision=getattr(args, "precision", None),
                      shape_modes=getattr(args, "shape_modes", None),
                      gender_from_context=getattr(args, "gender_from_context", None),
                      sharpen=getattr(args, "sharpen", None))
        from .generate.anonymizer import DEFAULT_RENDERER, RENDERERS

        renderer = getattr(args, "renderer", None) or DEFAULT_RENDERER
        if params["shape_modes"] is not None and renderer == "v1":
            raise IdentityDPError("--shape-modes is for the v2 renderer; v1 reads the whole face")
        if params["shape_modes"] is not None:
            from .generate.anonymizer import trained_shape_modes

            trained = trained_shape_modes(RENDERERS[renderer])
            if params["shape_modes"] > trained:
                raise IdentityDPError(f"--shape-modes {params['shape_modes']}: the {renderer} renderer was trained with "
                                      f"{trained} shape modes; choose 1 to {trained}")
        if params["sharpen"] is not None and renderer == "v1":
            raise IdentityDPError("--sharpen is for the v2 renderer (v1 renders at its own size and mirror-fuses)")
        if params["gender_from_context"] and renderer == "v1":
            raise IdentityDPError("--gender-from-context is for the v2 renderer; v1 reads the whole face")
        if params["gender_from_context"] and args.keep:
            raise IdentityDPError("--gender-from-context sets the gender from the context; drop --keep (or it)")
        if renderer != "v1":
            if getattr(args, "precision", None) == "int8":
                raise IdentityDPError(f"--precision int8 is for the v1 renderer (--renderer v1); {renderer} runs in fp32")
            if params["geometry"]:
                raise IdentityDPError(f"--geometry warps the v1 renderer's output (--renderer v1); {renderer} draws the "
                                      "pose and expression from the face's landmarks itself")
        params["weights"] = RENDERERS[renderer]
    if getattr(args, "renderer", None) is not None and args.method != "identitydp":
        raise IdentityDPError(f"--renderer applies to the identitydp method, not to {args.method}")
    if getattr(args, "gender_from_context", None) is not None and args.method != "identitydp":
        flag = "--gender-from-context" if args.gender_from_context else "--no-gender-from-context"
        raise IdentityDPError(f"{flag} applies to the identitydp method's renderer, not to {args.method}")
    if getattr(args, "sharpen", None) is not None and args.method != "identitydp":
        raise IdentityDPError(f"--sharpen applies to the identitydp method's renderer, not to {args.method}")
    if getattr(args, "shape_modes", None) is not None and args.method != "identitydp":
        raise IdentityDPError(f"--shape-modes applies to the identitydp method's renderer, not to {args.method}")
    if getattr(args, "precision", None) is not None and args.method != "identitydp":
        raise IdentityDPError(f"--precision applies to the identitydp method's renderer, not to {args.method}")
    if getattr(args, "render_every", None) is not None and args.method != "identitydp":
        raise IdentityDPError(f"--render-every applies to the identitydp method (it renders faces); {args.method} works per frame")
    return params


def config_from_args(args, method_params: dict | None = None):
    """The :class:`~identitydp.jobs.AnonymizerConfig` that the CLI options describe."""
    from .jobs import AnonymizerConfig

    preset = getattr(args, "privacy", None)
    if preset is not None:
        if args.method != "identitydp":
            raise IdentityDPError(f"--privacy is a level of the identitydp method, not of {args.method}")
        if args.epsilon is not None:
            raise IdentityDPError(f"--privacy {preset} sets ε = {PRIVACY_PRESETS[preset][0]:g}; drop --epsilon (or --privacy)")
        args.epsilon = PRIVACY_PRESETS[preset][0]
    if args.method == "identitydp" and args.epsilon is None:
        args.epsilon = DEFAULT_IDENTITYDP_EPSILON
    from .jobs import with_product_defaults

    params = with_product_defaults(args.method, _method_params(args) if method_params is None else method_params)
    exempt = getattr(args, "exempt", None)
    return AnonymizerConfig.create(args.method, threshold=args.threshold, seed=args.seed,
                                   exempt=None if exempt is None else str(Path(exempt).resolve()),
                                   paranoid=bool(getattr(args, "paranoid", False)),
                                   min_face=getattr(args, "min_face", None), **params)


def ledger_path_from_args(args) -> Path:
    from .privacy.store import default_ledger_path

    return Path(args.ledger) if getattr(args, "ledger", None) else default_ledger_path()


def video_options_from_args(args):
    from .jobs import VideoOptions

    detect_every = args.detect_every if args.detect_every is not None else (FAST_DETECT_EVERY if args.fast else 1)
    return VideoOptions(audio=not args.no_audio, detect_every=detect_every, max_missing=args.max_missing,
                        lookback=args.lookback)


def print_plan_notes(plan, quiet: bool) -> None:
    """Say what the plan leaves out (skipped formats, our own outputs, missing inputs) on stderr."""
    for missing in plan.missing:
        print(f"failed: {one_line(missing)}: no such file or folder", file=sys.stderr)
    if quiet:
        return
    for skipped in plan.skipped:
        print(one_line(f"skipped: {skipped.source}: {skipped.reason}"), file=sys.stderr)
    if plan.hidden:
        print(f"skipped: {plan.hidden} hidden file(s) (names or folders starting with '.')", file=sys.stderr)
    if plan.others:
        example = ", ".join(repr(str(p)) for p in plan.others[:3]) + (", ..." if len(plan.others) > 3 else "")
        print(f"skipped: {len(plan.others)} file(s) that are not images or videos by their suffix ({example})", file=sys.stderr)


def print_summary(summary, plan, method: str, ledger_path: Path | None, *, paranoid: bool = False) -> None:
    """The end-of-run lines every front end on a terminal prints (stdout; failures on stderr)."""
    for r in summary.results:
        if r.status in ("failed", "refused"):
            print(one_line(f"{r.status}: {r.reason}"), file=sys.stderr)
    done = [r for r in summary.results if r.status == "done"]
    images = [r for r in summary.results if r.item.kind == "image"]
    videos = [r for r in summary.results if r.item.kind == "video"]
    for r in done:
        if r.item.kind == "video" and r.report:
            rep = r.report
            print(f"wrote {r.item.output}: {rep['frames']} frames, {len(rep['tracks'])} face tracks, "
                  f"{rep['masked']} faces masked solid; {rep['processing_fps']:.1f} frames/s")
    done_images = [r for r in done if r.item.kind == "image"]
    if len(done_images) == 1:
        print(f"wrote {done_images[0].item.output}")
    elif done_images:
        print(f"wrote {len(done_images)} images")
    failed = summary.count("failed") + len(plan.missing)
    parts = []
    if images or not videos:
        faces = sum(r.faces for r in images if r.status == "done")
        parts.append(f"{len(images)} images, {faces} faces anonymized with {method}")
    if videos:
        parts.append(f"{len(videos)} videos, {sum(r.faces for r in videos if r.status == 'done')} face tracks")
    line = ", ".join(parts)
    if summary.masked:
        line += f", {summary.masked} faces masked solid because they could not be anonymized"
    exempt = sum(r.exempt for r in summary.results)
    if exempt:
        line += f", {exempt} faces kept as they were (matched a person in --exempt)"
    if summary.count("skipped"):
        line += f", {summary.count('skipped')} skipped (already done or our own outputs)"
    if summary.count("refused"):
        line += f", {summary.count('refused')} refused (over the privacy budget, nothing written)"
    line += f", {failed} failed"
    print(line)
    uncertain = sum(r.uncertain for r in summary.results if r.status == "done")
    if uncertain:
        if paranoid:
            print(f"paranoid: {uncertain} possible face(s) the detector was unsure of were masked solid")
        else:
            print(f"note: {uncertain} possible face(s) scored between 0.25 and the threshold and were left as they are; "
                  "look at them (--report lists where) or rerun with --paranoid to mask them", file=sys.stderr)
    if summary.ledger is not None and summary.releases:
        print(f"privacy ledger: {ledger_path} ({summary.releases} releases in this run; max ε spent on one face "
              f"over all runs: {summary.ledger['max_spent_epsilon']})")


def run_anonymize(args) -> int:
    from tqdm import tqdm

    from .jobs import Job, plan_job

    config = config_from_args(args)
    _warn_if_not_private(args)
    if args.budget is not None and not config.is_dp:
        print(f"identitydp: --budget applies to dp-pix and identitydp, not {args.method}", file=sys.stderr)
        return 2
    plan = plan_job(args.inputs, args.output)
    if not plan.items and not plan.missing:
        print("identitydp: no images or videos found in the inputs", file=sys.stderr)
        return 2
    ledger_path = ledger_path_from_args(args) if config.is_dp else None
    report_path = Path(args.report) if args.report else None
    if report_path is not None:
        # Checked before any work, so that a bad --report writes nothing at all.
        outputs = plan.outputs + ([ledger_path] if ledger_path else [])
        problem = report_path_problem(report_path, plan.inputs, outputs)
        if problem:
            print(f"identitydp: --report {problem}", file=sys.stderr)
            return 2
    if config.exempt is not None and any(i.kind == "video" for i in plan.items):
        print("identitydp: --exempt applies to photos; run the videos without it", file=sys.stderr)
        return 2
    if config.paranoid and any(i.kind == "video" for i in plan.items):
        print("identitydp: --paranoid applies to photos; for videos lower --threshold instead", file=sys.stderr)
        return 2
    print_plan_notes(plan, args.quiet)
    if not plan.items:
        return 1
    with Job(config, ledger=ledger_path, budget=args.budget, overwrite=args.overwrite,
             video=video_options_from_args(args), max_pixels=int(args.max_megapixels * 1e6)) as job:
        if config.exempt is not None:
            job.anonymizer  # reads the reference photos now: a bad --exempt folder stops here, before any output
        show = not args.quiet
        many = len(plan.items) >= PROGRESS_MIN_IMAGES
        summary = None
        with tqdm(total=len(plan.items), disable=not (show and many), unit="file", desc="anonymizing", file=sys.stderr) as bar:
            from .jobs import JobSummary
            from .jobs.job import timing_from

            import time

            summary = JobSummary()
            t0, stamps = time.perf_counter(), []
            frames_bars: dict = {}

            def frame_progress_for(item):
                if item.kind != "video" or not show:
                    return None
                b = frames_bars[item] = tqdm(unit="frame", desc=item.source.name, file=sys.stderr, dynamic_ncols=True, leave=not many)

                def frame_progress(n, total):
                    if total and b.total != total:
                        b.total = total
                    b.update(n - b.n)

                return frame_progress

            for result in job.results(plan.items, frame_progress=frame_progress_for):
                if result.item in frames_bars:
                    frames_bars.pop(result.item).close()
                summary.results.append(result)
                stamps.append(time.perf_counter() - t0)
                bar.update(1)
            if job.ledger is not None:
                summary.ledger = job.ledger.summary()
            summary.timing = timing_from(stamps)
    if report_path is not None:
        data = {
            "images": [r.report for r in summary.results if r.item.kind == "image" and r.status == "done"],
            "videos": [r.report for r in summary.results if r.item.kind == "video" and r.status == "done"],
            "failures": [{"input": str(r.item.source), "status": r.status, "error": r.reason}
                         for r in summary.results if r.status in ("failed", "refused")]
                        + [{"input": str(m), "status": "failed", "error": "no such file or folder"} for m in plan.missing],
            "skipped": [{"input": str(r.item.source), "reason": r.reason} for r in summary.results if r.status == "skipped"]
                       + [{"input": str(s.source), "reason": s.reason} for s in plan.skipped]
                       + [{"input": str(p), "reason": "not an image or video by its suffix"} for p in plan.others],
            "hidden_skipped": plan.hidden,
            "config": config.to_dict(),
            "ledger": summary.ledger,
            "timing": summary.timing,
        }
        if not _write_report(report_path, data):
            return EXIT_ERROR
    if not args.quiet:
        print_summary(summary, plan, args.method, ledger_path, paranoid=config.paranoid)
    else:
        for r in summary.results:
            if r.status in ("failed", "refused"):
                print(one_line(f"{r.status}: {r.reason}"), file=sys.stderr)
    bad = summary.count("failed") + summary.count("refused") + len(plan.missing)
    return 1 if bad else 0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def report_path_problem(path: Path, inputs: list[Path], outputs: list[Path]) -> str | None:
    """Why a JSON side file (``--report``, ``detect -o``) cannot go to ``path``; None if it can.

    It must never replace an input (also through a symlink or a hard link) nor another output of
    the same run, and its folder must be writable.
    """
    try:
        return _report_path_problem(path, inputs, outputs)
    except OSError as exc:  # a name too long, a loop of links, ...
        return f"{path}: {exc.strerror or exc}"


def _report_path_problem(path: Path, inputs: list[Path], outputs: list[Path]) -> str | None:
    for src in inputs:
        if _same_file(path, src):
            return f"{path}: refusing to overwrite an input file"
    for dst in outputs:
        if _same_file(path, dst):
            return f"{path}: refusing to overwrite an output of this run"
    if path.is_dir():
        return f"{path}: is a folder (give a file name, e.g. {path / 'report.json'})"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # missing folders are created, if their first existing ancestor is writable
    if not parent.is_dir():
        return f"{path}: {parent} is not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path}: cannot write in {parent} (permission denied)"
    return None


def write_json_atomic(path: Path, data) -> None:
    """Write JSON to ``path`` atomically (a temporary file renamed over it; a hard link to it is left alone).

    Raises:
        OSError: the file or its folder cannot be written.
    """
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".identitydp-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_report(path: Path, data) -> bool:
    try:
        write_json_atomic(path, data)
    except OSError as exc:
        print(f"identitydp: error: cannot write the report {path}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def run_detect(args) -> int:
    from .detect import CenterFaceDetector
    from .io import collect_images, read_image

    images = collect_images(args.inputs)
    if args.output:
        problem = report_path_problem(Path(args.output), [src for src, _ in images], [])
        if problem:
            print(f"identitydp: -o {problem}", file=sys.stderr)
            return 2
    detector = CenterFaceDetector(threshold=args.threshold)
    results = []
    failed = 0
    for src, _ in images:
        try:
            image = read_image(src)
        except IdentityDPError as exc:
            print(one_line(f"failed: {exc}"), file=sys.stderr)
            failed += 1
            continue
        det = detector.detect(image.pixels)
        results.append({"input": str(src), "width": image.pixels.shape[1], "height": image.pixels.shape[0], "faces": det.to_json()})
    text = json.dumps(results, indent=2)
    if args.output:
        try:
            write_json_atomic(Path(args.output), results)
        except OSError as exc:
            print(f"identitydp: error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
        print(f"wrote {args.output}: {sum(len(r['faces']) for r in results)} faces in {len(results)} images")
    else:
        print(text)
    return 1 if failed else 0


def _warn_if_not_private(args) -> None:
    """Say on stderr when the outputs carry no privacy guarantee (the ledger records it too)."""
    if args.method in ("identitydp", "dp-pix") and args.epsilon is not None and math.isinf(args.epsilon):
        print("identitydp: warning: --epsilon inf adds no noise: the outputs are NOT private", file=sys.stderr)
    if args.seed is not None:
        print("identitydp: warning: --seed makes the noise reproducible by anyone who knows or guesses the seed: "
              "for experiments only, not private against them", file=sys.stderr)
