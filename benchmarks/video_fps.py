"""Video speed benchmark (issue 7): frames/s on a 20 s 1280×720 clip with 3 moving LFW faces.

Runs `identitydp` video anonymization (blur, and identitydp) with detection on every frame and on
every 3rd frame (identitydp also rendering every 3rd frame: what `--fast` sets), the last of these
again with the detector's `--min-face 40`, and the `deface` CLI (its blur) on the same clip. Each figure is end-to-end wall
time (decode, detect, track, anonymize, encode, audio copy) divided by the number of frames.

The clip is composed from LFW faces (tests/clipgen.py) and written under cache/ (not committed).
Leak frames are counted on every output, after its timing: frames in which a face that shows is
still the input's (mean |output − input| over its inner box under 4 levels of 255, both decoded
from the files; re-encoding alone moves a face by ~1 level, reported as ``codec_floor``).
identitydp runs the registered renderer of ``--renderer`` (default v2, on ONNX Runtime; v1 at its
default precision, int8 on ONNX Runtime); without a registered one, a randomly initialised v1
generator of the shipped architecture (timing only).

Usage: nice python benchmarks/video_fps.py [--seconds 20] [--threads 1] [--skip-deface]
       [--methods blur,identitydp] [--min-face 40] [--out docs/results/video_fps.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from clipgen import Clip, FaceSpec, load_sprites, write_clip  # noqa: E402

from identitydp.detect import CenterFaceDetector  # noqa: E402
from identitydp.jobs import AnonymizerConfig  # noqa: E402
from identitydp.video import anonymize_video, count_frames, probe_video  # noqa: E402

DATA = REPO.parent / "shared" / "data"
FPS = Fraction(25)
H, W = 720, 1280


def wander(x0, y0, vx, vy, size, phase, seed):
    """Linear drift with a slow sinusoidal sway, bouncing off the frame edges, plus jitter."""
    rng = np.random.default_rng(seed)
    jitter = rng.normal(0, 1.5, size=(100_000, 2))

    def bounce(p, lo, hi):
        span = hi - lo
        q = (p - lo) % (2 * span)
        return lo + (q if q < span else 2 * span - q)

    def script(t):
        x = bounce(x0 + vx * t + 40 * np.sin(t / 30 + phase), 80, W - 80)
        y = bounce(y0 + vy * t + 25 * np.sin(t / 45 + phase), 80, H - 80)
        s = size * (1 + 0.2 * np.sin(t / 60 + phase))
        return x + jitter[t, 0], y + jitter[t, 1], s

    return script


def compose(seconds: float, detector) -> Clip:
    """The benchmark's clip (deterministic), with its per-frame ground truth."""
    n = int(round(seconds * float(FPS)))
    lfw = sorted((DATA / "lfw" / "lfw-deepfunneled").glob("*/*.jpg"))
    sprites = load_sprites(lfw, 3, detector, start=1000)
    faces = [
        FaceSpec(sprites[0], wander(200, 200, 2.5, 0.8, 150, 0.0, 1), name="a"),
        FaceSpec(sprites[1], wander(900, 400, -1.8, -0.6, 110, 1.0, 2), name="b"),
        FaceSpec(sprites[2], wander(640, 560, 1.2, -1.1, 80, 2.0, 3), name="c"),
    ]
    return Clip(H, W, n, faces, fps=FPS, seed=11)


def make_clip(path: Path, clip: Clip) -> tuple[Path, int]:
    n = clip.num_frames
    if path.exists() and count_frames(path)[0] == n:
        return path, n
    path.parent.mkdir(parents=True, exist_ok=True)
    write_clip(path, (f for f, _ in clip.frames()), FPS, n, crf=20)
    return path, n


#: Mean |output - input| (0..255 levels, decoded frames) under which a visible face counts as
#: left as it was. Re-encoding alone moves an untouched face by ~1 level (``codec_floor`` in the
#: results: the same measure on a face-free strip of the frame); blur and rendering by far more.
LEAK_MAD = 4.0


def leak_frames(clip: Clip, source: Path, output: Path) -> dict:
    """Frames of ``output`` in which a face of ``clip`` that shows (>= 60 % of its inner 70 % box
    visible) is still the input's: mean |output - input| over its visible inner pixels below
    :data:`LEAK_MAD`, both decoded from the files as a viewer would."""
    import av

    def inner(box, frac=0.7):  # the central 70 % of the face box, as the tests' leak check uses
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        hw, hh = (box[2] - box[0]) * frac / 2, (box[3] - box[1]) * frac / 2
        return (max(0, int(np.floor(cx - hw))), max(0, int(np.floor(cy - hh))),
                min(W, int(np.ceil(cx + hw))), min(H, int(np.ceil(cy + hh))))

    leaks, checked, mads, floor, examples = set(), 0, [], [], []
    with av.open(str(source)) as a, av.open(str(output)) as b:
        frames = zip(a.decode(video=0), b.decode(video=0))
        for t, (fa, fb) in enumerate(frames):
            orig, out = fa.to_ndarray(format="rgb24"), fb.to_ndarray(format="rgb24")
            _, truths = clip.render(t)
            diff = np.abs(out.astype(np.int16) - orig.astype(np.int16)).mean(axis=2)
            floor.append(float(diff[:40, :].mean()))  # the top strip: background only (faces stay below y = 80)
            for gt in truths:
                x0, y0, x1, y1 = inner(gt.box)
                vis = gt.visible[y0:y1, x0:x1]
                if x1 <= x0 or y1 <= y0 or vis.sum() < 0.6 * (x1 - x0) * (y1 - y0):
                    continue
                checked += 1
                mad = float(diff[y0:y1, x0:x1][vis].mean())
                mads.append(mad)
                if mad < LEAK_MAD:
                    leaks.add(t)
                    if len(examples) < 10:
                        examples.append({"frame": t, "face": gt.face, "mad": round(mad, 2)})
    return {"leak_frames": len(leaks), "face_frames_checked": checked, "threshold_mad": LEAK_MAD,
            "min_mad": round(min(mads), 2) if mads else None,
            "p1_mad": round(float(np.percentile(mads, 1)), 2) if mads else None,
            "codec_floor_mad_median": round(float(np.median(floor)), 2) if floor else None,
            "examples": examples}


def identitydp_weights(cache: Path, renderer: str):
    """The registered weights of ``renderer`` (v1/v2), else a random-init v1 generator of the
    shipped architecture (timing only)."""
    from identitydp.generate.anonymizer import RENDERERS
    from identitydp.models.registry import registry, weight_path

    if RENDERERS[renderer] in registry():
        return weight_path(RENDERERS[renderer]), f"registered {renderer} ({RENDERERS[renderer]})"
    import torch

    from identitydp.generate.networks import FaceGenerator, NetConfig
    from identitydp.generate.checkpoint import export_generator

    path = cache / "random_generator_128.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        export_generator(FaceGenerator(NetConfig(size=128)), torch.zeros(128), path, {"margin": 0.25})
    return path, "random-init (timing only; no trained generator registered)"


def _cpu(who) -> float:
    """User + system CPU seconds (of this process with its threads, or of its waited-for children)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_ours(clip: Path, out: Path, method: str, detect_every: int, threads: int, params: dict, min_face: int = 0) -> dict:
    """One end-to-end run of our video path; ``params`` are the method's (render_every for identitydp)."""
    # Built as the CLI builds it (the job layer's configuration: detector threads, precision).
    anonymizer = AnonymizerConfig.create(method, seed=0, pad_tight=False, min_face=min_face or None, **params).build()
    if out.exists():
        out.unlink()
    t0, c0 = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
    report = anonymize_video(anonymizer, clip, out, detect_every=detect_every)
    wall, cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_SELF) - c0
    return {
        "tool": "identitydp",
        "method": method,
        "detect_every": detect_every,
        **({"render_every": params.get("render_every", 1)} if method == "identitydp" else {}),
        "min_face": min_face or None,
        **({"precision": anonymizer.method.describe()["precision"]} if method == "identitydp" else {}),
        "frames": report.frames,
        "seconds": round(wall, 2),
        "fps": round(report.frames / wall, 2),
        "cpu_seconds": round(cpu, 2),
        "fps_per_cpu_second": round(report.frames / cpu, 2),
        "stage_seconds": {k: round(v, 2) for k, v in report.seconds.items()},
        "tracks": len(report.tracks),
        "track_frames": [list(t.frame_range) for t in report.tracks],
        "faces_anonymized": report.faces,
        "audio": report.audio,
    }


def run_deface(clip: Path, out: Path, threads: int) -> dict:
    if out.exists():
        out.unlink()
    # deface's own CLI entry point, with OpenCV limited to the same thread count as ours.
    code = (
        "import sys, cv2; cv2.setNumThreads(%d); from deface.deface import main; "
        "sys.argv = ['deface', %r, '-o', %r, '--replacewith', 'blur', '--backend', 'opencv']; main()"
    ) % (threads, str(clip), str(out))
    t0, c0 = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_CHILDREN) - c0
    if proc.returncode != 0:
        return {"tool": "deface", "error": proc.stderr[-2000:]}
    frames = count_frames(out)[0]
    return {
        "tool": "deface",
        "method": "blur (deface default, no tracking)",
        "detect_every": 1,
        "frames": frames,
        "seconds": round(wall, 2),
        "fps": round(frames / wall, 2),
        "cpu_seconds": round(cpu, 2),
        "fps_per_cpu_second": round(frames / cpu, 2),
        "audio": "dropped (deface needs --keep-audio and an ffmpeg binary)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1, help="torch / OpenCV threads (default 1)")
    ap.add_argument("--methods", default="blur,identitydp")
    ap.add_argument("--detect-every", default="1,3")
    ap.add_argument("--render-every", default="1,3",
                    help="identitydp: render each track every R frames (runs every --detect-every with R = 1, and R > 1 "
                         "with the largest --detect-every; default 1,3)")
    ap.add_argument("--min-face", default="40",
                    help="also run the last setting of each method with the detector's --min-face PX (comma list; 0: none)")
    ap.add_argument("--skip-deface", action="store_true")
    ap.add_argument("--renderer", choices=["v1", "v2"], default="v2", help="identitydp renderer (default v2, the product's default)")
    ap.add_argument("--cache", default=str(REPO / "cache" / "video_bench"))
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "video_fps.json"))
    args = ap.parse_args()
    cv2.setNumThreads(args.threads)
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    cache = Path(args.cache)
    composed = compose(args.seconds, CenterFaceDetector(pad_tight=False))
    clip, n = make_clip(cache / f"clip_720p_3faces_{int(args.seconds)}s.mp4", composed)
    info = probe_video(clip)
    res: dict = {
        "clip": {"width": info.width, "height": info.height, "fps": float(info.fps), "frames": n, "faces": 3, "audio": info.audio_codecs,
                 "composed_from": "LFW deep-funneled faces (tests/clipgen.py), 80-180 px faces moving and swaying"},
        "threads": args.threads,
        "note": "fps: frames / wall time, end to end (decode, detect, track, anonymize, encode, audio). The 2-core machine "
                "is shared and loaded by other jobs, so wall time varies with load (each run records the 1-minute load "
                "average before and after it); fps_per_cpu_second (frames / CPU seconds of the process and its children, "
                "encoder threads and deface's ffmpeg included) is the load-independent comparison.",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_start": list(os.getloadavg())},
        "runs": [],
    }
    print(f"clip: {clip} ({info.width}x{info.height}, {float(info.fps):g} fps, {n} frames); load average {os.getloadavg()[0]:.1f}")
    if not args.skip_deface:
        # deface first, right before our blur, so both meet similar machine load.
        load = os.getloadavg()[0]
        r = run_deface(clip, cache / "out_deface.mp4", args.threads)
        r["loadavg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        res["runs"].append(r)
        if "error" in r:
            print(f"deface failed: {r['error']}")
        else:
            r["leaks"] = leak_frames(composed, clip, cache / "out_deface.mp4")
            print(f"deface     blur       detect every 1: {r['fps']:6.2f} frames/s  ({r['seconds']} s; {r['fps_per_cpu_second']} frames per CPU-second; "
                  f"{r['leaks']['leak_frames']} leak frames)")
    for method in [m for m in args.methods.split(",") if m]:
        params: dict = {}
        if method == "identitydp":
            weights, kind = identitydp_weights(cache, args.renderer)
            params = {"epsilon": 2.0, "weights": str(weights)}
        detect_everys = [int(v) for v in args.detect_every.split(",")]
        settings = [(k, 1, 0) for k in detect_everys]
        if method == "identitydp":
            settings += [(max(detect_everys), int(r), 0) for r in args.render_every.split(",") if int(r) > 1]
        settings += [(settings[-1][0], settings[-1][1], int(m)) for m in args.min_face.split(",") if int(m) > 0]
        for k, render_every, min_face in settings:
            load = os.getloadavg()[0]
            run_params = {**params, "render_every": render_every} if method == "identitydp" else params
            suffix = (f"_render{render_every}" if render_every > 1 else "") + (f"_minface{min_face}" if min_face else "")
            out = cache / f"out_{method}_every{k}{suffix}.mp4"
            r = run_ours(clip, out, method, k, args.threads, run_params, min_face)
            r["loadavg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            r["leaks"] = leak_frames(composed, clip, out)  # after the timing: not part of it
            if method == "identitydp":
                r["generator"] = kind
            res["runs"].append(r)
            what = f"detect every {k}" + (f", render every {render_every}" if render_every > 1 else "") + (
                f", min face {min_face} px" if min_face else "")
            print(f"identitydp {method:>10} {what}: {r['fps']:6.2f} frames/s  ({r['seconds']} s; {r['fps_per_cpu_second']} frames per CPU-second; {r['tracks']} tracks; "
                  f"{r['leaks']['leak_frames']} leak frames, min MAD {r['leaks']['min_mad']})")
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
