"""`identitydp anonymize` and `identitydp detect`."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from ._cli_types import MAX_SEED, bounded_float, bounded_int, divisor_of, epsilon, path_text, positive_float
from .errors import IdentityDPError

METHOD_CHOICES = ["blur", "pixelate", "mask", "dp-pix", "identitydp"]
PROGRESS_MIN_IMAGES = 4
EXIT_ERROR = 3  # as identitydp.cli.EXIT_ERROR (not imported: the cli module imports this one)


#: Upper bound of --blocks (more cells than this is no longer pixelation).
MAX_BLOCKS = 512
#: DP-Pix canonical grid side (identitydp.anonymizers.DPPixAnonymizer's default ``grid``).
DP_PIX_GRID = 64
#: Detector score threshold: (0, 1) as CenterFaceDetector takes it (a sigmoid score never reaches
#: 1, so 1 would silently find no face at all).
THRESHOLD = bounded_float(0, 1, low_open=True, high_open=True)

#: ε of identitydp when --epsilon is not given: the smallest ε of the evaluation, at which no
#: judge re-identifies more than 1.5 % of LFW's 1,680 people (docs/evaluation.md).
DEFAULT_IDENTITYDP_EPSILON = 1.0


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
    p.add_argument("--epsilon", type=epsilon,
                   help=f"privacy parameter ε for dp-pix / identitydp (smaller = more private; identitydp default {DEFAULT_IDENTITYDP_EPSILON:g})")
    p.add_argument("--delta", type=bounded_float(0, 1, low_open=True, high_open=True), help="δ for the Gaussian mechanism (identitydp)")
    p.add_argument("--mechanism", choices=["laplace", "gaussian", "metric"], help="identitydp noise mechanism")
    p.add_argument(
        "--projection",
        action="store_true",
        help="identitydp: add the noise in the public 16-d projection of identity space (less noise per ε)",
    )
    p.add_argument(
        "--no-geometry",
        action="store_true",
        help="identitydp: paste the rendering as generated, without warping it onto the original's 68 landmarks",
    )
    p.add_argument("--sigma", type=bounded_float(0, 1, low_open=True), help="blur σ as a fraction of the face size, in (0, 1] (default 0.1)")
    p.add_argument("--blocks", type=bounded_int(1, MAX_BLOCKS), help=f"pixelate: cells across the face, 1..{MAX_BLOCKS} (default 8)")
    p.add_argument("--block", type=divisor_of(DP_PIX_GRID), help=f"dp-pix: block side b in canonical pixels, a divisor of {DP_PIX_GRID} (default 8)")
    p.add_argument("--m", type=bounded_int(1, DP_PIX_GRID**2), help="dp-pix: pixels that may differ between neighbours (default 16)")
    p.add_argument("--threshold", type=THRESHOLD, default=0.5, help="face detection score threshold, in (0, 1) (default 0.5)")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED), help="seed for a reproducible run (experiments only; default: OS randomness)")
    p.add_argument("--budget", type=positive_float(), help="refuse to spend more than this ε on any one input (identitydp)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the inputs)")
    p.add_argument("--report", type=path_text, help="write a JSON report of every image and face to this file")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    from ._cli_video import add_video_arguments

    add_video_arguments(p)
    p.set_defaults(func=run_anonymize)

    d = subparsers.add_parser("detect", help="detect faces and print (or write) them as JSON")
    d.add_argument("inputs", nargs="+", type=path_text, metavar="INPUT", help="image files or folders")
    d.add_argument("--threshold", type=THRESHOLD, default=0.5, help="detection score threshold, in (0, 1) (default 0.5)")
    d.add_argument("-o", "--output", type=path_text, help="write the JSON here instead of printing it")
    d.set_defaults(func=run_detect)


def _method_params(args) -> dict:
    params: dict = {}
    if args.method == "blur":
        params["sigma"] = args.sigma
    elif args.method == "pixelate":
        params["blocks"] = args.blocks
    elif args.method == "dp-pix":
        params.update(epsilon=args.epsilon, block=args.block, m=args.m)
    elif args.method == "identitydp":
        params.update(epsilon=args.epsilon, mechanism=args.mechanism, delta=args.delta, projection=args.projection or None,
                      geometry=False if args.no_geometry else None)
    return params


def _plan_outputs(args, images: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Pair every input with its output path."""
    from .io import IMAGE_SUFFIXES

    if args.output is None:
        return [(src, src.with_name(f"{src.stem}.anonymized{src.suffix}")) for src, _ in images]
    out = Path(args.output)
    single_file_input = len(args.inputs) == 1 and Path(args.inputs[0]).is_file()
    if single_file_input and out.suffix.lower() in IMAGE_SUFFIXES:
        return [(images[0][0], out)]
    return [(src, out / rel) for src, rel in images]


def run_anonymize(args) -> int:
    from tqdm import tqdm

    from .io import collect_images
    from .pipeline import Anonymizer

    from ._cli_video import run_videos, split_videos

    if args.method == "identitydp" and args.epsilon is None:
        args.epsilon = DEFAULT_IDENTITYDP_EPSILON
    _warn_if_not_private(args)
    videos, args.inputs = split_videos(args.inputs)
    # Collect and plan everything before processing anything, so that a bad --report is
    # refused before any work (and before any output is written).
    images = collect_images(args.inputs) if args.inputs else []
    if args.inputs and not images:
        print("identitydp: no images found in the inputs", file=sys.stderr)
        return 2
    plan = _plan_outputs(args, images) if images else []
    video_report = image_report = None
    if args.report:
        from ._cli_video import planned_paths

        image_report = Path(args.report)
        video_report = image_report if not images else image_report.with_suffix(".videos.json")
        video_inputs, video_outputs = planned_paths(args, videos, single=len(videos) == 1 and not images)
        inputs = [src for src, _ in plan] + video_inputs
        outputs = [dst for _, dst in plan] + video_outputs
        if plan and args.method in ("identitydp", "dp-pix"):
            outputs.append(_ledger_path(args, plan))
        for path in ([video_report] if videos else []) + ([image_report] if images else []):
            problem = report_path_problem(path, inputs, outputs)
            if problem:
                print(f"identitydp: --report {problem}", file=sys.stderr)
                return 2
    video_rc = 0
    if videos:
        # Video files go through the tracking pipeline (identitydp.video); images continue below.
        video_rc, video_reports = run_videos(args, videos, single=len(videos) == 1 and not images)
        if video_report is not None and not _write_report(video_report, {"videos": video_reports}):
            return EXIT_ERROR
        if not images:
            return video_rc
    protected = {src.resolve() for src, _ in plan}
    anonymizer = Anonymizer(args.method, threshold=args.threshold, seed=args.seed, **_method_params(args))
    ledger = ledger_path = None
    if args.method in ("identitydp", "dp-pix"):
        from .privacy.ledger import PrivacyLedger

        ledger_path = _ledger_path(args, plan)
        # Continue an existing ledger: anonymizing the same photo again is another release of the
        # same faces, and the budget must see it.
        ledger = PrivacyLedger.load(ledger_path) if ledger_path.exists() else PrivacyLedger()
        ledger.budget = args.budget
    elif args.budget is not None:
        print(f"identitydp: --budget applies to dp-pix and identitydp, not {args.method}", file=sys.stderr)
        return 2
    n_faces = n_masked = 0
    failures: list[tuple[Path, str]] = []
    reports = []
    show_progress = len(plan) >= PROGRESS_MIN_IMAGES and not args.quiet
    for src, dst in tqdm(plan, disable=not show_progress, unit="img", desc="anonymizing", file=sys.stderr):
        try:
            report = anonymizer.anonymize_file(
                src, dst, overwrite=args.overwrite, protected=protected,
                before_write=(lambda r, s=src: _charge(ledger, s, r)) if ledger is not None else None,
            )
        except IdentityDPError as exc:
            failures.append((src, str(exc)))
            continue
        n_faces += report.num_faces
        n_masked += report.num_masked
        reports.append(report.to_json())
    if ledger is not None and reports:
        ledger.write(ledger_path)
    if image_report is not None:
        failed = [{"input": str(s), "error": e} for s, e in failures]
        if not _write_report(image_report, {"images": reports, "failures": failed}):
            return EXIT_ERROR
    if not args.quiet:
        for src, err in failures:
            print(f"failed: {err}", file=sys.stderr)
        written = [r["output"] for r in reports]
        if len(written) == 1:
            print(f"wrote {written[0]}")
        elif written:
            print(f"wrote {len(written)} images under {Path(args.output) if args.output else 'their input folders'}")
        summary = f"{len(plan)} images, {n_faces} faces anonymized with {args.method}"
        if n_masked:
            summary += f", {n_masked} faces masked solid because they could not be anonymized"
        summary += f", {len(failures)} failed"
        print(summary)
        if ledger is not None and reports:
            print(f"privacy ledger: {ledger_path} (max ε spent on one face: {ledger.max_spent().epsilon:g})")
    return max(video_rc, 1 if failures else 0)


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


def _ledger_path(args, plan) -> Path:
    if args.output and Path(args.output).suffix == "":
        return Path(args.output) / "privacy_ledger.json"
    first_out = plan[0][1]
    return first_out.with_name(f"{first_out.stem}.ledger.json") if len(plan) == 1 else first_out.parent / "privacy_ledger.json"


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
            print(f"failed: {exc}", file=sys.stderr)
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


def _face_key(source: Path, index: int) -> str:
    """Ledger key of one face: the file's content hash, so a renamed copy is the same input."""
    import hashlib

    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    return f"{source.name}@{digest}#face{index}"


def _warn_if_not_private(args) -> None:
    """Say on stderr when the outputs carry no privacy guarantee (the ledger records it too)."""
    import math

    if args.method in ("identitydp", "dp-pix") and args.epsilon is not None and math.isinf(args.epsilon):
        print("identitydp: warning: --epsilon inf adds no noise: the outputs are NOT private", file=sys.stderr)
    if args.seed is not None:
        print("identitydp: warning: --seed makes the noise reproducible by anyone who knows or guesses the seed: "
              "for experiments only, not private against them", file=sys.stderr)


def _charge(ledger, source: Path, report) -> None:
    """Charge every face's release before the output is written, all or nothing per image.

    Raises:
        BudgetExceededError: some face would exceed ``--budget``; nothing is recorded or written.
    """
    import math

    from .errors import BudgetExceededError

    releases = [(_face_key(source, f.index), f.privacy) for f in report.faces if f.privacy]
    for key, release in releases:
        eps = release["epsilon"]
        eps = math.inf if eps == "inf" else float(eps)
        if eps > ledger.remaining(key) * (1 + 1e-9):
            raise BudgetExceededError(
                f"{source}: releasing face {key.rsplit('#', 1)[1]} at ε={eps:g} would exceed the budget "
                f"(ε spent on it so far {ledger.spent(key).epsilon:g}, budget {ledger.budget:g}); nothing written"
            )
    for key, release in releases:
        ledger.record(key, **release)
