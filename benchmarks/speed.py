"""Speed benchmark (issue 16): IdentityDP against our blur and `deface`, whole processes, one run.

1. **Photo folder**: ten 1920×1080 photos with 1–5 LFW faces each (30 faces, different people),
   written under cache/bench_speed/ (not committed). Each tool runs as a fresh process on the
   whole folder, ``--repeats`` times (median): wall time, CPU time (user + system of the process
   and its children) and peak resident memory. Tools: ``identitydp anonymize DIR -o OUT`` (the
   default method, IdentityDP at ε = 1), ``identitydp anonymize --method blur``, and the
   ``deface`` CLI (CenterFace + blur, its defaults, OpenCV backend) on a copy of the folder. Ratios are against
   deface in the same run.
2. **Cold start**: ``identitydp anonymize ONE.jpg -o OUT.jpg`` on one of those photos (fresh
   process, models loaded from disk), median wall.
3. **Stages**: milliseconds per stage for one photo in a warm process (decode, detect, align,
   embed, context (the default's gender network and the 68-point fit it shares with the renderer),
   privacy, render, geometry, blend, encode), each stage timed around the library call the
   pipeline makes, summed over the photo's faces.

Video frames/s are measured by benchmarks/video_fps.py (20 s 720p clip, 3 faces); this script
reads its latest figures from docs/results/video_fps.json into the summary.

The machine's load average is recorded before and after; run it on a quiet machine
(pause training: ``kill -STOP <pid>``).

Ratios: of the medians, and the median of the per-round ratios (each round runs the three tools
back to back, which cancels the machine's slow drifts; the spread is reported too).

Usage: python benchmarks/speed.py [--repeats 3] [--skip-deface] [--out docs/results/speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
FACES_PER_PHOTO = [1, 2, 3, 4, 5, 5, 4, 3, 2, 1]  # 30 faces
VENV_BIN = Path(sys.executable).parent

# Runs a command and prints its wall time, CPU time and peak RSS as JSON (a fresh parent per
# measurement, so RUSAGE_CHILDREN is that command alone).
_MEASURE = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": proc.returncode, "wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "peak_mb": ru.ru_maxrss / 1024, "stderr": proc.stderr[-2000:]}))
"""


def build_folder(folder: Path, seed: int = 0) -> list[Path]:
    """The ten 1080p photos (deterministic); returns their paths."""
    marker = folder / f".built-{seed}"
    paths = [folder / f"photo_{i:02d}.jpg" for i in range(len(FACES_PER_PHOTO))]
    if marker.exists():
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    people = sorted(p for p in (DATA / "lfw" / "lfw-deepfunneled").iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(people))
    k = 0
    yy, xx = np.mgrid[0:1080, 0:1920]
    for path, faces in zip(paths, FACES_PER_PHOTO):
        base = rng.uniform(60, 200, size=3)
        bg = (base[None, None, :] + 30 * np.sin(xx[..., None] / 300.0 + rng.uniform(0, 6)) + 20 * np.cos(yy[..., None] / 200.0))
        canvas = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
        slot = 1920 // faces
        for j in range(faces):
            person = people[order[k]]
            k += 1
            face = Image.open(sorted(person.glob("*.jpg"))[0]).crop((40, 30, 210, 220))
            side = int(rng.integers(120, min(360, slot - 20)))
            face = face.resize((side, int(side * 190 / 170)))
            x = int(j * slot + rng.integers(0, max(1, slot - side)))
            y = int(rng.integers(20, 1080 - face.height - 20))
            canvas.paste(face, (x, y))
        canvas.save(path, quality=92)
    marker.touch()
    return paths


def measure(cmd: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    if data["rc"] != 0:
        raise SystemExit(f"failed ({data['rc']}): {' '.join(cmd)}\n{data['stderr']}")
    data.pop("stderr")
    return data


def median_of(runs: list[dict]) -> dict:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in ("wall_s", "cpu_s", "peak_mb")}


def folder_runs(photos: list[Path], repeats: int, skip_deface: bool, env: dict) -> dict:
    work = Path(tempfile.mkdtemp(prefix="identitydp-speed-"))
    tools: dict[str, list[dict]] = {"identitydp": [], "identitydp_blur": [], "deface": []}
    try:
        for r in range(repeats):
            for tool in tools:
                out = work / f"{tool}-{r}"
                ledger = work / f"ledger-{tool}-{r}.sqlite"
                if tool == "identitydp":
                    cmd = [str(VENV_BIN / "identitydp"), "anonymize", str(photos[0].parent), "-o", str(out), "--ledger", str(ledger), "--quiet"]
                elif tool == "identitydp_blur":
                    cmd = [str(VENV_BIN / "identitydp"), "anonymize", str(photos[0].parent), "-o", str(out), "--method", "blur", "--quiet"]
                else:
                    if skip_deface:
                        continue
                    copy = work / f"deface-in-{r}"
                    copy.mkdir()
                    for p in photos:
                        shutil.copy(p, copy / p.name)
                    # OpenCV backend: a plain `pip install deface` has no onnxruntime; with it
                    # (identitydp installs it) deface's auto choice was 1.5x slower here.
                    cmd = [str(VENV_BIN / "deface"), "--backend", "opencv", *[str(copy / p.name) for p in photos]]
                tools[tool].append(measure(cmd, env))
                print(f"  {tool} run {r + 1}: {tools[tool][-1]['wall_s']:.2f} s wall", flush=True)
        cold = []
        for r in range(repeats):
            cmd = [str(VENV_BIN / "identitydp"), "anonymize", str(photos[2]), "-o", str(work / f"cold-{r}.jpg"),
                   "--ledger", str(work / f"ledger-cold-{r}.sqlite"), "--quiet"]
            cold.append(measure(cmd, env))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {tool: {**median_of(runs), "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs]}
              for tool, runs in tools.items() if runs}
    if "deface" in result:
        for tool in ("identitydp", "identitydp_blur"):
            result[tool]["wall_vs_deface"] = round(result[tool]["wall_s"] / result["deface"]["wall_s"], 3)
            result[tool]["cpu_vs_deface"] = round(result[tool]["cpu_s"] / result["deface"]["cpu_s"], 3)
            # Each round runs the three tools back to back: the ratio within a round cancels the
            # slow drifts of a shared machine's speed (run to run, whole runs here vary by ±15 %).
            paired = sorted(a["wall_s"] / b["wall_s"] for a, b in zip(tools[tool], tools["deface"]))
            result[tool]["paired_wall_vs_deface"] = {"median": round(statistics.median(paired), 3),
                                                     "min": round(paired[0], 3), "max": round(paired[-1], 3)}
    result["cold_start_one_photo"] = {**median_of(cold), "photo": photos[2].name, "faces": FACES_PER_PHOTO[2]}
    return result


def stage_times(photos: list[Path], threads: int) -> dict:
    """ms per stage for one photo (the 3-face one), warm process, median of 5."""
    import os

    os.environ["OMP_NUM_THREADS"] = str(threads)  # ONNX Runtime sessions (and torch, if it loads) read it
    import cv2

    cv2.setNumThreads(threads)
    from identitydp.align import align_face
    from identitydp.blend import enlarged_box, paste_face
    from identitydp.generate.anonymizer import PASTE_REGION
    from identitydp.io import read_image, write_image
    from identitydp.jobs import AnonymizerConfig, with_product_defaults

    # What `identitydp anonymize` runs at ε = 1: the product defaults (the gender from the context).
    anonymizer = AnonymizerConfig.create("identitydp", **with_product_defaults("identitydp", {"epsilon": 1.0})).build()
    method = anonymizer.method
    photo = photos[2]
    tmp = Path(tempfile.mkdtemp(prefix="identitydp-stages-"))
    rows = []
    for rep in range(6):
        t = {}
        s = time.perf_counter(); image = read_image(photo).pixels; t["decode"] = time.perf_counter() - s
        s = time.perf_counter(); det = anonymizer.detect(image); t["detect"] = time.perf_counter() - s
        for key in ("align", "embed", "context", "privacy", "render", "geometry", "blend"):
            t[key] = 0.0
        out = image.copy()
        for i in range(len(det)):
            s = time.perf_counter(); aligned = align_face(image, det.landmarks[i], size=method.size, margin=method.margin); t["align"] += time.perf_counter() - s
            s = time.perf_counter(); z = method._identities(image, det.landmarks[i][None]); t["embed"] += time.perf_counter() - s
            if method.gender_from_context:  # the context network (and the 68-point fit it needs)
                s = time.perf_counter(); kept, lm68 = method._context_gender([aligned.crop]); t["context"] += time.perf_counter() - s
                s = time.perf_counter(); noisy = method.mechanism.perturb(z, kept).embeddings; t["privacy"] += time.perf_counter() - s
            else:
                lm68 = [None]
                s = time.perf_counter(); noisy = method.mechanism.perturb(z).embeddings; t["privacy"] += time.perf_counter() - s
            s = time.perf_counter()
            if method.inpainting:  # v2: 68-point fit (unless the context pass made it), mask and sketch, the network, multi-band blend and grain
                face, mask = method.inpaint(aligned.crop, noisy, landmarks68=lm68[0])
            else:
                face, mask = method.render(aligned.crop[None], noisy)[0], method.mask
            t["render"] += time.perf_counter() - s
            if method.geometry:
                s = time.perf_counter(); face = method.match_geometry(face, aligned.crop); t["geometry"] += time.perf_counter() - s
            s = time.perf_counter()
            out = paste_face(out, face, aligned.inverse, mask, color_match=method.color_match,
                             original_crop=aligned.crop, region=enlarged_box(det.boxes[i], PASTE_REGION))
            t["blend"] += time.perf_counter() - s
        s = time.perf_counter(); write_image(tmp / f"o{rep}.jpg", out); t["encode"] = time.perf_counter() - s
        s = time.perf_counter(); anonymizer.anonymize(image, det); t["pipeline_anonymize_check"] = time.perf_counter() - s
        if rep:  # the first is warm-up
            rows.append(t)
    shutil.rmtree(tmp, ignore_errors=True)
    ms = {k: round(1000 * statistics.median(r[k] for r in rows), 1) for k in rows[0]}
    ms["total_stages"] = round(sum(v for k, v in ms.items() if k != "pipeline_anonymize_check"), 1)
    return {"photo": photo.name, "faces": len(det), "threads": threads, "detector_threads": anonymizer.detector.threads, "ms": ms,
            "renderer": method.describe().get("renderer"), "backend": method.describe().get("backend"),
            "mirror_fusion": method.mirror_fusion}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="threads of the in-process stage timing")
    ap.add_argument("--skip-deface", action="store_true")
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "bench_speed")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "speed.json")
    args = ap.parse_args()
    if not (DATA / "lfw").is_dir():
        raise SystemExit(f"LFW not found under {DATA}")
    photos = build_folder(args.cache)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    load_before = os.getloadavg()
    print(f"photo folder: {len(photos)} photos 1920x1080, {sum(FACES_PER_PHOTO)} faces; load {load_before[0]:.2f}")
    folder = folder_runs(photos, args.repeats, args.skip_deface, env)
    stages = stage_times(photos, args.threads)
    load_after = os.getloadavg()
    video = None
    video_json = REPO / "docs" / "results" / "video_fps.json"
    if video_json.is_file():
        v = json.loads(video_json.read_text())
        video = {"source": str(video_json.relative_to(REPO)),
                 "runs": [{k: r.get(k) for k in ("tool", "method", "detect_every", "render_every", "fps", "fps_per_cpu_second")} for r in v["runs"]]}
    result = {
        "benchmark": "benchmarks/speed.py",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load_before,
                    "loadavg_after": load_after},
        "folder": {"photos": len(photos), "size": "1920x1080", "faces": sum(FACES_PER_PHOTO), **folder},
        "stages_one_photo": stages,
        "video": video,
        "targets": {"folder_wall_vs_deface": "<= 1.0", "cold_start_one_photo_s": "<= 1.5", "video_720p_3_faces_fps": ">= 10",
                    "folder_peak_mb": "<= 600"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{'tool':18s} {'wall s':>8s} {'cpu s':>8s} {'peak MB':>8s} {'wall/deface':>12s} {'paired (min-max)':>18s}")
    for tool in ("identitydp", "identitydp_blur", "deface"):
        if tool in folder:
            r = folder[tool]
            p = r.get("paired_wall_vs_deface")
            paired = f"{p['median']:.2f} ({p['min']:.2f}-{p['max']:.2f})" if p else ""
            print(f"{tool:18s} {r['wall_s']:8.2f} {r['cpu_s']:8.2f} {r['peak_mb']:8.0f} {r.get('wall_vs_deface', 1.0):12.2f} {paired:>18s}")
    c = folder["cold_start_one_photo"]
    print(f"cold start, one photo ({c['faces']} faces): {c['wall_s']:.2f} s wall, {c['peak_mb']:.0f} MB")
    print(f"stages, one photo ({stages['faces']} faces, warm, {stages['threads']} threads, detector on "
          f"{stages['detector_threads']} as jobs run it beside the renderer), ms: "
          + ", ".join(f"{k} {v}" for k, v in stages["ms"].items()))
    print(f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}; wrote {args.out}")
    _plot(result, args.out.with_suffix(".png"))
    return 0


def _plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    folder = result["folder"]
    tools = [t for t in ("deface", "identitydp_blur", "identitydp") if t in folder]
    stages = result["stages_one_photo"]["ms"]
    keys = [k for k in stages if k not in ("total_stages", "pipeline_anonymize_check")]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    a.barh(tools, [folder[t]["wall_s"] for t in tools], color=["#888", "#6a9", "#37c"][: len(tools)])
    for i, t in enumerate(tools):
        a.text(folder[t]["wall_s"], i, f" {folder[t]['wall_s']:.1f} s", va="center")
    a.set_xlabel("wall time, 10 photos 1080p, 30 faces (s)")
    a.set_title("photo folder, whole process")
    b.barh(keys, [stages[k] for k in keys], color="#37c")
    b.invert_yaxis()
    b.set_xlabel(f"ms for one photo, {result['stages_one_photo']['faces']} faces (warm)")
    b.set_title("IdentityDP stages")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
