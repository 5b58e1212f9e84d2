"""`identitydp batch` (folders or manifests on several processes or Ray) and `identitydp ledger`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .._cli_types import bounded_int, path_text, positive_float

EXIT_ERROR = 3


def register(subparsers) -> None:
    from .._cli_anonymize import METHOD_CHOICES, add_method_arguments
    from .._cli_video import add_video_arguments

    b = subparsers.add_parser(
        "batch",
        help="anonymize a folder or a manifest on several processes or a Ray cluster (resumable)",
        description="Anonymize many files with worker processes (--engine local) or Ray Data (--engine ray): "
                    "models load once per worker, one ledger for all, outputs that exist are skipped, "
                    "so rerunning the same command resumes a killed run.",
    )
    b.add_argument("inputs", nargs="*", type=path_text, metavar="INPUT", help="image / video files or folders")
    b.add_argument("--manifest", type=path_text, help="CSV or Parquet file with a 'path' column (and optional 'output')")
    b.add_argument("-o", "--output", type=path_text, required=True, help="output folder (keeps the input tree)")
    b.add_argument("--engine", choices=["local", "ray"], default="local", help="local processes (default) or Ray Data")
    b.add_argument("--workers", type=bounded_int(1, 1024), default=2, help="worker processes / Ray actors (default 2)")
    b.add_argument("--address", help="Ray: join this cluster (e.g. ray://head:10001 or auto) instead of an embedded Ray")
    b.add_argument("--method", choices=METHOD_CHOICES, default="identitydp", help="anonymization method (default identitydp)")
    add_method_arguments(b)
    add_video_arguments(b)
    b.set_defaults(func=run_batch_cli)

    led = subparsers.add_parser("ledger", help="show, export or (on purpose, logged) raise the privacy ledger's budget")
    led.add_argument("--ledger", type=path_text, help="ledger file (default: $IDENTITYDP_LEDGER or ~/.local/share/identitydp/ledger.sqlite)")
    sub = led.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="totals, budget and the most exposed faces")
    show.add_argument("--top", type=bounded_int(1, 10_000), default=10, help="faces to list (most ε spent first)")
    show.set_defaults(func=run_ledger_show)
    exp = sub.add_parser("export", help="write everything (faces, releases, events) as JSON")
    exp.add_argument("-o", "--output", type=path_text, required=True, help="JSON file to write")
    exp.set_defaults(func=run_ledger_export)
    rb = sub.add_parser("raise-budget", help="raise (or remove with --to inf) the stored ε budget; logged with the reason")
    rb.add_argument("--to", type=positive_float(allow_inf=True), required=True, help="new ε budget per face (inf: none)")
    rb.add_argument("--reason", required=True, help="why (kept in the ledger's event log)")
    rb.set_defaults(func=run_ledger_raise)


def _ledger(args) -> Path:
    from ..privacy.store import default_ledger_path

    return Path(args.ledger) if args.ledger else default_ledger_path()


def run_batch_cli(args) -> int:
    from tqdm import tqdm

    from .._cli_anonymize import (
        _warn_if_not_private,
        config_from_args,
        ledger_path_from_args,
        print_plan_notes,
        print_summary,
        video_options_from_args,
    )
    from . import plan_job, read_manifest
    from .batch import run_batch

    if not args.inputs and not args.manifest:
        print("identitydp batch: give input files/folders or --manifest", file=sys.stderr)
        return 2
    config = config_from_args(args)
    _warn_if_not_private(args)
    if args.budget is not None and not config.is_dp:
        print(f"identitydp: --budget applies to dp-pix and identitydp, not {args.method}", file=sys.stderr)
        return 2
    plan = plan_job(args.inputs, args.output) if args.inputs else read_manifest(args.manifest, args.output)
    if args.inputs and args.manifest:
        extra = read_manifest(args.manifest, args.output)
        plan.items += extra.items
        plan.skipped += extra.skipped
        plan.missing += extra.missing
    print_plan_notes(plan, args.quiet)
    if not plan.items:
        print("identitydp batch: nothing to do (no images or videos found)", file=sys.stderr)
        return 1 if plan.missing else 2
    ledger = ledger_path_from_args(args) if config.is_dp else None
    with tqdm(total=len(plan.items), unit="file", desc=f"batch ({args.engine}, {args.workers} workers)",
              disable=args.quiet, file=sys.stderr) as bar:
        summary = run_batch(plan.items, config, ledger=ledger, budget=args.budget, overwrite=args.overwrite,
                            video=video_options_from_args(args), engine=args.engine, workers=args.workers,
                            address=args.address, progress=lambda r: bar.update(1), quiet=args.quiet,
                            max_pixels=int(args.max_megapixels * 1e6))
    if args.report:
        from .._cli_anonymize import _write_report

        if not _write_report(Path(args.report), {**summary.to_dict(), "config": config.to_dict()}):
            return EXIT_ERROR
    if not args.quiet:
        print_summary(summary, plan, args.method, ledger, paranoid=config.paranoid)
    bad = summary.count("failed") + summary.count("refused") + len(plan.missing)
    return 1 if bad else 0


def run_ledger_show(args) -> int:
    from ..privacy.store import LedgerStore

    path = _ledger(args)
    if not path.exists():
        print(f"no ledger at {path} yet (nothing released)")
        return 0
    with LedgerStore(path) as store:
        data = store.export()
    s = {k: v for k, v in data.items() if k not in ("faces_detail", "release_log", "events")}
    print(f"ledger {s['path']}: {s['inputs']} inputs, {s['faces']} faces; releases: {s['releases']['released']} released, "
          f"{s['releases']['pending']} pending, {s['releases']['void']} void (never published)")
    print(f"budget per face: {'none' if s['budget_epsilon'] is None else 'ε = %g' % s['budget_epsilon']}; "
          f"most exposed face: ε = {s['max_spent_epsilon']}")
    faces = sorted(data["faces_detail"], key=lambda f: -float(f["spent"]["epsilon"]))[: args.top]
    for f in faces:
        if f["spent"]["releases"]:
            print(f"  {f['key']:<28} {f['source_name'] or '':<30} ε = {f['spent']['epsilon']} over {f['spent']['releases']} release(s)")
    for e in data["events"]:
        if e["kind"].startswith("budget"):
            print(f"  event: {e['kind']} {json.dumps(e['detail'])}")
    return 0


def run_ledger_export(args) -> int:
    from .._cli_anonymize import report_path_problem, write_json_atomic
    from ..privacy.store import LedgerStore

    path = _ledger(args)
    out = Path(args.output)
    problem = report_path_problem(out, [path], [])
    if problem:
        print(f"identitydp ledger export: -o {problem}", file=sys.stderr)
        return 2
    with LedgerStore(path) as store:
        data = store.export()
    write_json_atomic(out, data)
    print(f"wrote {out}: {data['faces']} faces, {sum(data['releases'].values())} release records")
    return 0


def run_ledger_raise(args) -> int:
    from ..privacy.store import LedgerStore

    with LedgerStore(_ledger(args)) as store:
        before = store.budget
        now = store.set_budget(args.to, override=True, reason=args.reason)
    print(f"budget per face: {before if before is not None else 'none'} -> {now if now is not None else 'none'} (logged: {args.reason})")
    return 0
