"""Batch benchmark (issue 13): images/s of `identitydp batch` with 1 and 2 workers, local and Ray,
against the plain `identitydp anonymize` CLI on the same folder, in one run.

The folder: N 1920×1080 photos, each 1–4 LFW faces (different people) pasted on a smooth
background, written under cache/bench_batch/ (not committed). Every figure is a whole process
(start-up, model loading, Ray start for --engine ray, all files), wall time, with a fresh ledger
and output folder; images/s = N / wall. Ratios are against the plain CLI of the same run.

Usage: python benchmarks/batch.py [--images 24] [--method identitydp] [--skip-ray]
       [--out docs/results/batch.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"


def build_folder(folder: Path, n: int, seed: int = 0) -> Path:
    """N 1080p photos with 1–4 LFW faces each (LFW people, one photo per person)."""
    marker = folder / f".built-{n}-{seed}"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    people = sorted((DATA / "lfw" / "lfw-deepfunneled").iterdir())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(people))
    k = 0
    for i in range(n):
        yy, xx = np.mgrid[0:1080, 0:1920]
        base = rng.uniform(60, 200, size=3)
        bg = (base[None, None, :] + 30 * np.sin(xx[..., None] / 300.0 + rng.uniform(0, 6)) + 20 * np.cos(yy[..., None] / 200.0)).clip(0, 255)
        canvas = Image.fromarray(bg.astype(np.uint8))
        faces = int(rng.integers(1, 5))
        for j in range(faces):
            person = people[order[k % len(people)]]
            k += 1
            face = Image.open(sorted(person.glob("*.jpg"))[0]).crop((40, 30, 210, 220))
            side = int(rng.integers(180, 360))
            face = face.resize((side, int(side * 190 / 170)))
            x = int(40 + j * (1880 // faces) + rng.integers(0, max(1, 1880 // faces - side - 40)))
            y = int(rng.integers(40, 1080 - face.height - 40))
            canvas.paste(face, (x, y))
        canvas.save(folder / f"photo_{i:03d}.jpg", quality=92)
    marker.touch()
    return folder


def run(cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    before = os.times()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "summary": proc.stdout.strip().splitlines()[-2:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--method", default="identitydp")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "batch.json")
    args = ap.parse_args()

    work = REPO / "cache" / "bench_batch"
    folder = build_folder(work / "in", args.images)
    exe = [sys.executable, "-m", "identitydp.cli"]
    setups = [("cli", [*exe, "anonymize", str(folder)], {})]
    for engine in ["local"] + ([] if args.skip_ray else ["ray"]):
        for workers in (1, 2):
            setups.append((f"{engine}-{workers}", [*exe, "batch", str(folder), "--engine", engine, "--workers", str(workers)], {}))
    results = {}
    for name, cmd, _ in setups:
        out = work / f"out-{name}"
        ledger = work / f"ledger-{name}.sqlite"
        shutil.rmtree(out, ignore_errors=True)
        for p in work.glob(f"ledger-{name}.sqlite*"):
            p.unlink()
        env = {**os.environ, "IDENTITYDP_LEDGER": str(ledger), "PYTHONUNBUFFERED": "1"}
        report = work / f"report-{name}.json"
        full = [*cmd, "-o", str(out), "--method", args.method, "--quiet", "--report", str(report)]
        r = run(full, env)
        timing = json.loads(report.read_text()).get("timing") or {}
        r["first_result_s"] = timing.get("first_result_s")
        r["steady_images_per_s"] = timing.get("steady_items_per_s")
        written = len(list(out.rglob("*.jpg")))
        if written != args.images:
            raise SystemExit(f"{name}: wrote {written} of {args.images} images")
        r["images_per_s"] = round(args.images / r["wall_s"], 3)
        results[name] = r
        print(f"{name:>8}: {r['wall_s']:7.2f} s wall  {r['images_per_s']:6.3f} images/s  "
              f"(first result after {r['first_result_s']} s, then {r['steady_images_per_s']} images/s)", flush=True)
    base = results["cli"]["images_per_s"]
    steady_base = results["cli"]["steady_images_per_s"]
    for r in results.values():
        r["speed_vs_cli"] = round(r["images_per_s"] / base, 3)
        r["steady_speed_vs_cli"] = round(r["steady_images_per_s"] / steady_base, 3) if r["steady_images_per_s"] and steady_base else None
    load = os.getloadavg()
    report = {
        "benchmark": "identitydp batch vs anonymize (issue 13)",
        "images": args.images,
        "image_size": "1920x1080, 1-4 LFW faces each",
        "method": args.method,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_after": [round(x, 2) for x in load]},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3), sharey=True)
        names = list(results)
        for ax, key, ratio, title in ((axes[0], "images_per_s", "speed_vs_cli", "whole process (incl. start-up)"),
                                      (axes[1], "steady_images_per_s", "steady_speed_vs_cli", "steady state (after the first result)")):
            values = [results[n][key] or 0 for n in names]
            ax.barh(names, values, color=["#777"] + ["#3a7"] * (len(names) - 1))
            for i, n in enumerate(names):
                ax.text(values[i], i, f" {values[i]:.2f} ({results[n][ratio] or 0:.2f}x)", va="center")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("images/s")
            ax.set_xlim(0, max(values) * 1.45)
        axes[0].invert_yaxis()
        fig.suptitle(f"{args.images} photos 1920x1080, {args.method}, 2-core CPU", fontsize=10)
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib missing: no plot", file=sys.stderr)
    print(f"wrote {args.out}")
    for n, r in results.items():
        print(f"  {n:>8}: {r['images_per_s']:.3f} images/s = {r['speed_vs_cli']:.2f}x the plain CLI; "
              f"steady {r['steady_images_per_s']} = {r['steady_speed_vs_cli']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
