"""The measured privacy curve of a run: re-identification and acceptance per ε, for users.

``identitydp eval`` writes ``privacy_curve.json`` into every run folder (from ``results.jsonl``
alone). One curve per shipped renderer is committed in ``src/identitydp/weights/``:
``privacy_curve.json`` (v1, the 300-people run of the default domain, docs/results/lfw300-knob)
and ``privacy_curve_v2.json`` (v2, docs/results/lfw300-knob-v2zw2 since the v2zw2 weights); ``identitydp privacy explain
[--renderer v2]`` and the web page show them next to the maths, so that a user picks ε from
evidence rather than from the bound alone.

Per IdentityDP setting (method parameters, ε) it keeps, for each judge: rank-1 re-identification
among the run's probe people (chance = 1 / people) and the verification acceptance at the judge's
FAR threshold, each with its 95 % interval; and the same for the solid mask (the floor) and for
the originals (what an unanonymized photo gives).

Rebuild the committed files:
    python -m identitydp.eval.curve docs/results/lfw300-knob -o src/identitydp/weights/privacy_curve.json --default-params '{"projection": true}'
    python -m identitydp.eval.curve docs/results/lfw300-knob-v2zw2 -o src/identitydp/weights/privacy_curve_v2.json \
        --source "identitydp eval on 300 LFW people (docs/results/lfw300-knob-v2zw2): 300 probe people, 1,000 View-2 impostor pairs; the v2 renderer identitydp_renderer_v2 (v2zw2, sha256 dfbae299c33d...) with its sketch on 2 shape modes and 2 mouth modes (the default), Laplace in the public 16-d projection (the default); 2026-12-08"
    python -m identitydp.eval.curve docs/results/lfw300-knob-v2zw2 -o src/identitydp/weights/privacy_curve_keep_v2.json \
        --source "docs/results/lfw300-knob-v2zw2 (300 LFW people, v2 renderer v2zw2, 2 shape modes, 2 mouth modes; kept attributes at ε = 1 and the gender from the context at ε = 1, 4, 16, 64, ∞; 2026-12-08)"

(the last one is what ``privacy explain --keep`` and ``--gender-from-context`` show: each kept
setting, and the gender from the context at every ε, next to the default setting's point at the
same ε; the folder's other points, e.g. a candidate renderer's, are never selected.)

(v2z's, 2026-12-07 (h)–2026-12-08: docs/results/lfw300-knob-v2z; v2x's, 2026-12-07 (f)–(h): docs/results/lfw300-knob-v2x; v2d's, until 2026-12-07: docs/results/lfw300-knob-v2-modes2 and
docs/results/lfw300-context-knob with ``--default-params '{"weights": "identitydp_renderer_v2"}'``.)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

CURVE_FORMAT = "identitydp-privacy-curve/1"
CURVE_METRICS = ("rank1", "verify_accept")


def _epsilon(params: dict) -> float:
    value = params.get("epsilon", 1.0)
    return math.inf if value in ("inf", math.inf) else float(value)


def privacy_curve(rows: list[dict], *, source: str, default_params: dict | None = None) -> dict:
    """The curve from a run's result lines (``results.jsonl`` as dicts).

    ``default_params``: the IdentityDP parameters (other than ε) that make up the product's default
    setting in this run (e.g. ``{"geometry": False}``); ``privacy explain`` shows those points.
    """
    by_setting: dict[str, dict] = {}
    protocol = None
    chance = None
    originals: dict = {}  # without a noop setting: the reference rank-1 of the original probes
    for row in rows:
        if row.get("metric") == "chance_rank1":
            chance = row["value"]
        if row.get("metric") == "rank1_originals" and row.get("judge"):
            originals[row["judge"]] = {"rank1": {"value": row["value"], "ci95": None, "n": row.get("n")}}
        if row.get("metric") not in CURVE_METRICS or row.get("judge") is None:
            continue
        protocol = protocol or row.get("protocol")
        entry = by_setting.setdefault(row["setting"], {"setting": row["setting"], "method": row["method"],
                                                       "params": row.get("params", {}), "judges": {}})
        judge = entry["judges"].setdefault(row["judge"], {})
        judge[row["metric"]] = {"value": row["value"], "ci95": row.get("extra", {}).get("ci95"), "n": row.get("n")}
    points = []
    for entry in by_setting.values():
        if entry["method"] != "identitydp":
            continue
        params = {k: v for k, v in entry["params"].items() if k != "epsilon"}
        points.append({"setting": entry["setting"], "epsilon": _epsilon(entry["params"]), "params": params,
                       "judges": entry["judges"]})
    points.sort(key=lambda p: (json.dumps(p["params"], sort_keys=True), p["epsilon"]))
    return {
        "format": CURVE_FORMAT,
        "source": source,
        "protocol": protocol,
        "default_params": dict(default_params or {}),
        "chance_rank1": chance,
        "floor_mask": by_setting.get("mask", {}).get("judges"),
        "originals": by_setting.get("noop", {}).get("judges") or originals,
        "points": [{**p, "epsilon": "inf" if math.isinf(p["epsilon"]) else p["epsilon"]} for p in points],
    }


def write_curve(run_dir: str | Path, source: str | None = None, default_params: dict | None = None) -> Path:
    """Write ``privacy_curve.json`` into ``run_dir`` from its ``results.jsonl``."""
    run_dir = Path(run_dir)
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line.strip()]
    path = run_dir / "privacy_curve.json"
    path.write_text(json.dumps(privacy_curve(rows, source=source or str(run_dir), default_params=default_params), indent=1, allow_nan=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write a run's privacy curve (privacy_curve.json)")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("-o", "--output", type=Path, help="also copy it here (e.g. src/identitydp/weights/privacy_curve.json)")
    ap.add_argument("--source", help="how to describe the run in the file (default: the run folder)")
    ap.add_argument("--default-params", type=json.loads, default={},
                    help='JSON of the default setting\'s parameters besides ε in this run, e.g. \'{"geometry": false}\'')
    args = ap.parse_args(argv)
    path = write_curve(args.run_dir, args.source, args.default_params)
    if args.output:
        args.output.write_text(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
