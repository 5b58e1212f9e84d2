#!/usr/bin/env python3
"""Benchmark the pretrained face models on LFW (evaluation only; nothing is trained here).

1. Verification, LFW View 2 (pairs.txt: 10 folds x 300 matched + 300 mismatched pairs): for the
   dlib port, mobileface and faceres, cosine distance between the unit embeddings
   (``IdentityEmbedder``) of the central CenterFace face of each image, from one aligned crop
   ("single") and from the mean of the crop's and its mirror's features ("flip", what
   ``identitydp verify`` uses); for each fold the accuracy-maximising threshold is chosen on the
   other 9 folds and applied to it. Also AUC, TAR at FAR = 0.1 %, and the rank correlation of
   pair distances between recognizers (all, impostor and genuine pairs). Images where CenterFace
   finds no face use the median landmarks of the others (counted in the output).
2. ms per face of each network's forward pass (256 faces in batches of 16 aligned crops,
   ``--threads`` torch threads; alignment and CenterFace detection timed separately).
3. BlazeFace (back model) detection rate on the first 1,000 LFW images (sorted paths): a face
   counts as found when a box with score > 0.5 contains the image centre.
4. FaceMesh on every 5th of those 1,000: share of the 468 points inside the CenterFace box (and
   inside it grown by 10 % a side: the mesh's forehead and jaw contour reach past CenterFace's
   box), whether eyes, nose and mouth fall inside it, and distance of eyes / nose / mouth corners
   to CenterFace's points (in inter-ocular distances).
5. FaceRes age and gender on 300 UTKFace *training* faces (labels in the file names).

Writes ``docs/results/models.json`` and the verification thresholds used by ``identitydp
verify`` (``src/identitydp/weights/lfw_thresholds.json``). Embeddings are cached under ``cache/``.

Usage: nice python benchmarks/lfw_verification.py [--threads 1] [--pairs N for a quick run]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
MODELS = ("dlib", "mobileface", "faceres")
VARIANTS = ("single", "flip")  # one aligned crop; mean of the crop's and its mirror's features


def read_pairs(path: Path) -> tuple[list[tuple[str, str, bool]], np.ndarray]:
    """(pairs as (key_a, key_b, same)), fold index per pair) from an LFW pairs.txt."""
    lines = path.read_text().splitlines()
    folds, per = (int(v) for v in lines[0].split())
    pairs, fold = [], []
    rows = [l.split("\t") for l in lines[1:] if l.strip()]
    if len(rows) != folds * 2 * per:
        raise SystemExit(f"{path}: expected {folds * 2 * per} pairs, found {len(rows)}")
    for i, t in enumerate(rows):
        if len(t) == 3:
            pairs.append((f"{t[0]}/{t[0]}_{int(t[1]):04d}", f"{t[0]}/{t[0]}_{int(t[2]):04d}", True))
        else:
            pairs.append((f"{t[0]}/{t[0]}_{int(t[1]):04d}", f"{t[2]}/{t[2]}_{int(t[3]):04d}", False))
        fold.append(i // (2 * per))
    return pairs, np.asarray(fold)


def best_threshold(dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold t maximising accuracy of "same iff dist <= t"; returns (t, accuracy)."""
    order = np.argsort(dist)
    d, s = dist[order], same[order]
    # Accepting the first k pairs: correct = same among them + different among the rest.
    correct = np.concatenate([[0], np.cumsum(s)]) + np.concatenate([[(~s).sum()], (~s).sum() - np.cumsum(~s)])
    k = int(np.argmax(correct))
    if k == 0:
        t = d[0] - 1e-6
    elif k == len(d):
        t = d[-1] + 1e-6
    else:
        t = (d[k - 1] + d[k]) / 2
    return float(t), float(correct[k] / len(d))


def auc(dist: np.ndarray, same: np.ndarray) -> float:
    ranks = rankdata(-dist)
    pos = same.sum()
    neg = len(same) - pos
    return float((ranks[same].sum() - pos * (pos + 1) / 2) / (pos * neg))


def rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties shared."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def central_face(det, shape) -> int | None:
    if len(det) == 0:
        return None
    centre = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
    return int(np.argmin(((centre - np.array([shape[1], shape[0]]) / 2) ** 2).sum(1)))


class Cache:
    """Dict of key -> array persisted as one .npz (no pickles)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, np.ndarray] = {}
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                keys = [str(k) for k in z["keys"]]
                self.data = dict(zip(keys, z["values"]))

    def save(self) -> None:
        if not self.data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.data)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys), values=np.stack([self.data[k] for k in keys]))
        tmp.replace(self.path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", type=Path, default=DATA / "lfw")
    parser.add_argument("--train", type=Path, default=DATA / "train")
    parser.add_argument("--cache", type=Path, default=REPO / "cache" / "lfw_models")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "models.json")
    parser.add_argument("--thresholds", type=Path, default=REPO / "src" / "identitydp" / "weights" / "lfw_thresholds.json")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=0, help="use only every k-th pair so that about N remain (quick check; no thresholds written)")
    parser.add_argument("--blaze-images", type=int, default=1000)
    parser.add_argument("--mesh-every", type=int, default=5)
    parser.add_argument("--utk", type=int, default=300)
    parser.add_argument("--speed-images", type=int, default=256)
    args = parser.parse_args()

    import cv2
    import torch
    from PIL import Image
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    from identitydp.detect import CenterFaceDetector
    from identitydp.embed import IdentityEmbedder
    from identitydp.models import judges

    images_dir = args.lfw / "lfw-deepfunneled"
    if not images_dir.is_dir():
        raise SystemExit(f"LFW not found at {images_dir}")
    pairs, fold = read_pairs(args.lfw / "pairs.txt")
    if args.pairs:
        step = max(1, len(pairs) // args.pairs)
        pairs, fold = pairs[::step], fold[::step]
    keys = sorted({k for a, b, _ in pairs for k in (a, b)})

    detector = CenterFaceDetector()
    landmark_cache = Cache(args.cache / "centerface.npz")  # key -> (5, 2), NaN when no face
    box_cache = Cache(args.cache / "centerface_boxes.npz")
    embedders = {m: IdentityEmbedder(m, batch_size=16) for m in MODELS}
    # Raw features of each crop and of its mirror image, (2, D): both variants come from them.
    caches = {m: Cache(args.cache / (embedders[m].config_id.rsplit(":", 1)[0].replace(":", "_") + "_raw2.npz")) for m in MODELS}

    def raw_pair(m: str, chips: np.ndarray) -> np.ndarray:
        """(N, 2, D) raw features of aligned crops and of their mirror images."""
        x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            return torch.stack([embedders[m]._features(x), embedders[m]._features(x.flip(3))], 1).numpy()

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    def vector(m: str, key: str, variant: str) -> np.ndarray:
        raw = caches[m].data[key]
        return unit(raw[0] if variant == "single" else raw.sum(0))

    def load(key: str) -> np.ndarray:
        return np.asarray(Image.open(images_dir / f"{key}.jpg").convert("RGB"))

    def detect(key: str, image: np.ndarray) -> None:
        if key in landmark_cache.data:
            return
        det = detector.detect(image)
        k = central_face(det, image.shape)
        landmark_cache.data[key] = det.landmarks[k] if k is not None else np.full((5, 2), np.nan, np.float32)
        box_cache.data[key] = det.boxes[k] if k is not None else np.full(4, np.nan, np.float32)

    # ---------------------------------------------------------------- embeddings
    todo = [k for k in keys if any(k not in caches[m].data for m in MODELS)]
    batch = 16
    bar = tqdm(total=len(todo), desc="LFW embeddings", unit="img")
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        images = [load(k) for k in chunk]
        for k, im in zip(chunk, images):
            detect(k, im)
        good = [i for i, k in enumerate(chunk) if not np.isnan(landmark_cache.data[k]).any()]
        for m in MODELS:
            need = [i for i in good if chunk[i] not in caches[m].data]
            if not need:
                continue
            crops = np.concatenate([embedders[m].chips(images[i], landmark_cache.data[chunk[i]][None]) for i in need])
            vectors = raw_pair(m, crops)
            for i, v in zip(need, vectors):
                caches[m].data[chunk[i]] = v
        bar.update(len(chunk))
        if (start // batch) % 25 == 24:
            for c in (*caches.values(), landmark_cache, box_cache):
                c.save()
    bar.close()
    for c in (*caches.values(), landmark_cache, box_cache):
        c.save()

    # Faces CenterFace missed: embed at the median landmarks of the found ones (LFW is centred).
    found = np.stack([v for k, v in landmark_cache.data.items() if k in set(keys) and not np.isnan(v).any()])
    median_lm = np.median(found, 0)
    missed = [k for k in keys if np.isnan(landmark_cache.data[k]).any()]
    for k in missed:
        image = load(k)
        for m in MODELS:
            caches[m].data[k] = raw_pair(m, embedders[m].chips(image, median_lm[None]))[0]

    # The benchmark's vectors must be exactly what IdentityEmbedder (and so `identitydp verify`) computes.
    for m in MODELS:
        check = IdentityEmbedder(m, flip=True)
        k = keys[0]
        lm = landmark_cache.data[k] if not np.isnan(landmark_cache.data[k]).any() else median_lm
        ref = check.embed_chips(check.chips(load(k), lm[None])).vectors[0]
        if not np.allclose(ref, vector(m, k, "flip"), atol=1e-4):
            raise SystemExit(f"{m}: cached vectors differ from IdentityEmbedder's; delete {args.cache}")

    # ---------------------------------------------------------------- verification
    same = np.array([s for _, _, s in pairs])
    results: dict = {"verification": {}, "speed_ms_per_face": {}}
    dists = {}
    for m in MODELS:
        for variant in VARIANTS:
            d = np.array([1.0 - float(vector(m, a, variant) @ vector(m, b, variant)) for a, b, _ in pairs])
            dists[m, variant] = d
            accs, ths = [], []
            for f in np.unique(fold):
                t, _ = best_threshold(d[fold != f], same[fold != f])
                accs.append(float(((d[fold == f] <= t) == same[fold == f]).mean()))
                ths.append(t)
            t_all, acc_all = best_threshold(d, same)
            imp = np.sort(d[~same])
            # Just below the (k+1)-th closest impostor pair, k = 0.1 % of them: at most k accepted.
            far_t = float(np.nextafter(imp[int(np.floor(0.001 * len(imp)))], -np.inf))
            results["verification"][f"{m}/{variant}"] = {
                "config": embedders[m].config_id.rsplit(":", 1)[0] + f":{variant}",
                "accuracy_mean": float(np.mean(accs)),
                "accuracy_std": float(np.std(accs)),
                "fold_accuracies": accs,
                "fold_thresholds": ths,
                "auc": auc(d, same),
                "threshold_all_pairs": t_all,
                "accuracy_all_pairs_threshold": acc_all,
                "far_0.1pct_threshold": far_t,
                "tar_at_far_0.1pct": float((d[same] <= far_t).mean()),
                "far_at_far_threshold": float((d[~same] <= far_t).mean()),
                "mean_distance_same": float(d[same].mean()),
                "mean_distance_different": float(d[~same].mean()),
            }
    results["verification_rank_correlation"] = {
        f"{a}-{b}": {
            "all_pairs": spearman(dists[a, "flip"], dists[b, "flip"]),
            "impostor_pairs": spearman(dists[a, "flip"][~same], dists[b, "flip"][~same]),
            "genuine_pairs": spearman(dists[a, "flip"][same], dists[b, "flip"][same]),
        }
        for i, a in enumerate(MODELS) for b in MODELS[i + 1 :]
    }
    results["pairs"] = int(len(pairs))
    results["images"] = int(len(keys))
    results["centerface_missed_images"] = missed

    # ---------------------------------------------------------------- speed
    # A separate pass (the embedding loop above is cached): batches of 16 aligned faces.
    sample = [k for k in keys if k not in set(missed)][: args.speed_images]
    images = {k: load(k) for k in sample}
    t = time.perf_counter()
    for k in sample[:64]:
        detector.detect(images[k])
    results["speed_ms_per_face"]["centerface_250px_image"] = round(1000 * (time.perf_counter() - t) / min(64, len(sample)), 2)
    for m in MODELS:
        t = time.perf_counter()
        chips = np.concatenate([embedders[m].chips(images[k], landmark_cache.data[k][None]) for k in sample])
        t1 = time.perf_counter()
        embedders[m].embed_chips(chips)  # single crop; flip costs twice this
        t2 = time.perf_counter()
        results["speed_ms_per_face"][m] = round(1000 * (t2 - t1) / len(sample), 2)
        results["speed_ms_per_face"][f"{m}_alignment"] = round(1000 * (t1 - t) / len(sample), 2)

    # ---------------------------------------------------------------- BlazeFace / FaceMesh
    first = sorted(images_dir.glob("*/*.jpg"))[: args.blaze_images]
    blaze = judges.BlazeFace.load()
    mesh = judges.FaceMesh.load()
    hits, blaze_ms, mesh_rows, mesh_ms = 0, 0.0, [], 0.0
    for i, path in enumerate(tqdm(first, desc="BlazeFace / FaceMesh", unit="img")):
        image = np.asarray(Image.open(path).convert("RGB"))
        t = time.perf_counter()
        det = blaze.detect(image, threshold=0.5)
        blaze_ms += time.perf_counter() - t
        c = np.array([image.shape[1], image.shape[0]]) / 2
        if len(det) and ((det.boxes[:, :2] <= c) & (det.boxes[:, 2:] >= c)).all(1).any():
            hits += 1
        if i % args.mesh_every:
            continue
        key = f"{path.parent.name}/{path.stem}"
        detect(key, image)
        lm, box = landmark_cache.data[key], box_cache.data[key]
        if np.isnan(lm).any():
            continue
        t = time.perf_counter()
        res = mesh.predict(image, box[None], lm[None])
        mesh_ms += time.perf_counter() - t
        p = res.points[0, :, :2]
        iod = np.linalg.norm(lm[1] - lm[0])
        inside = ((p >= box[:2]) & (p <= box[2:])).all(1).mean()
        margin = 0.1 * (box[2:] - box[:2])
        inside_10 = ((p >= box[:2] - margin) & (p <= box[2:] + margin)).all(1).mean()
        key_points = p[[33, 133, 362, 263, 1, 61, 291]]
        key_inside = ((key_points >= box[:2]) & (key_points <= box[2:])).all()
        eye_l, eye_r = (p[33] + p[133]) / 2, (p[362] + p[263]) / 2
        errs = [np.linalg.norm(eye_l - lm[0]), np.linalg.norm(eye_r - lm[1]), np.linalg.norm(p[1] - lm[2]),
                np.linalg.norm(p[61] - lm[3]), np.linalg.norm(p[291] - lm[4])]
        mesh_rows.append([inside, res.scores[0], *(np.array(errs) / iod), inside_10, key_inside])
    landmark_cache.save()
    box_cache.save()
    rows = np.array(mesh_rows)
    results["blazeface"] = {
        "images": len(first), "detected": hits, "rate": hits / len(first),
        "criterion": "a box with score > 0.5 contains the image centre",
        "ms_per_image": round(1000 * blaze_ms / len(first), 2),
    }
    results["facemesh"] = {
        "faces": int(len(rows)),
        "share_of_points_inside_centerface_box_median": float(np.median(rows[:, 0])),
        "share_of_points_inside_centerface_box_min": float(rows[:, 0].min()),
        "faces_with_all_points_inside_box": float((rows[:, 0] == 1.0).mean()),
        "faces_with_all_points_inside_box_plus_10pct": float((rows[:, 7] == 1.0).mean()),
        "faces_with_eyes_nose_mouth_inside_box": float(rows[:, 8].mean()),
        "presence_score_median": float(np.median(rows[:, 1])),
        "error_vs_centerface_iod_median": dict(zip(["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"],
                                                   np.median(rows[:, 2:7], 0).round(4).tolist())),
        "ms_per_face_two_passes": round(1000 * mesh_ms / max(len(rows), 1), 2),
    }

    # ---------------------------------------------------------------- FaceRes age / gender
    if args.utk:
        files = sorted((args.train / "utkface").glob("*.jpg"))
        rng = np.random.default_rng(0)
        faceres = embedders["faceres"].net
        ages, males, pred_age, pred_male = [], [], [], []
        for i in tqdm(rng.choice(len(files), min(args.utk, len(files)), replace=False), desc="UTKFace age", unit="img"):
            match = re.match(r"(\d+)_(\d)_", files[i].name)
            if not match:
                continue
            image = np.asarray(Image.open(files[i]).convert("RGB"))
            det = detector.detect(image)
            k = central_face(det, image.shape)
            if k is None:
                continue
            out = faceres.predict(image, det.landmarks[k][None])
            ages.append(int(match.group(1)))
            males.append(match.group(2) == "0")
            pred_age.append(float(out.age[0]))
            pred_male.append(float(out.male[0]))
        ages_a, pred_a = np.array(ages), np.array(pred_age)
        results["faceres_utkface"] = {
            "faces": len(ages),
            "age_mae_years": float(np.abs(pred_a - ages_a).mean()),
            "age_correlation": float(np.corrcoef(pred_a, ages_a)[0, 1]),
            "gender_accuracy": float(((np.array(pred_male) > 0.5) == np.array(males)).mean()),
        }

    results["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                          "torch_threads": args.threads, "processor": platform.processor() or platform.machine()}

    # ---------------------------------------------------------------- report
    print(f"\nLFW View 2: {len(pairs)} pairs, {len(keys)} images, CenterFace missed {len(missed)}")
    print(f"{'model':<20}{'accuracy':>18}{'AUC':>8}{'TAR@FAR0.1%':>13}{'threshold':>11}")
    for m in MODELS:
        for variant in VARIANTS:
            v = results["verification"][f"{m}/{variant}"]
            print(f"{m + ' ' + variant:<20}{100 * v['accuracy_mean']:>11.2f} ± {100 * v['accuracy_std']:.2f}{v['auc']:>8.4f}"
                  f"{100 * v['tar_at_far_0.1pct']:>12.1f}%{v['threshold_all_pairs']:>11.4f}")
    print("Spearman correlation of pair distances (flip):")
    for k, v in results["verification_rank_correlation"].items():
        print(f"  {k}: " + ", ".join(f"{n} {c:.3f}" for n, c in v.items()))
    b = results["blazeface"]
    print(f"BlazeFace: {b['detected']}/{b['images']} = {100 * b['rate']:.1f} % ({b['ms_per_image']} ms/image)")
    fm = results["facemesh"]
    print(f"FaceMesh: {fm['faces']} faces, median {100 * fm['share_of_points_inside_centerface_box_median']:.1f} % of points "
          f"inside the CenterFace box (min {100 * fm['share_of_points_inside_centerface_box_min']:.1f} %); eyes, nose and "
          f"mouth inside it on {100 * fm['faces_with_eyes_nose_mouth_inside_box']:.1f} % of faces; all 468 points inside it on "
          f"{100 * fm['faces_with_all_points_inside_box']:.1f} %, inside it grown by 10 % a side on "
          f"{100 * fm['faces_with_all_points_inside_box_plus_10pct']:.1f} %; errors vs CenterFace / IOD "
          f"{fm['error_vs_centerface_iod_median']}")
    if "faceres_utkface" in results:
        u = results["faceres_utkface"]
        print(f"FaceRes on {u['faces']} UTKFace faces: age MAE {u['age_mae_years']:.1f} y (r = {u['age_correlation']:.2f}), "
              f"gender accuracy {100 * u['gender_accuracy']:.1f} %")
    print("speed (ms per face):", results["speed_ms_per_face"])

    if not args.pairs:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        thresholds = {
            m: {
                "metric": "cosine distance between unit embeddings of IdentityEmbedder(model, flip=True)",
                "config": results["verification"][f"{m}/flip"]["config"],
                "same_below": round(results["verification"][f"{m}/flip"]["threshold_all_pairs"], 6),
                "lfw_accuracy_10fold": round(results["verification"][f"{m}/flip"]["accuracy_mean"], 5),
                "far_0.1pct_below": round(results["verification"][f"{m}/flip"]["far_0.1pct_threshold"], 6),
            }
            for m in MODELS
        }
        args.thresholds.write_text(json.dumps(
            {"source": "benchmarks/lfw_verification.py on LFW View 2 (pairs.txt, 6,000 pairs)", "models": thresholds},
            indent=2) + "\n")
        print(f"wrote {args.out} and {args.thresholds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
