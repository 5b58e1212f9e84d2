#!/usr/bin/env python3
"""Build the compact, pre-aligned training bundle for the IdentityDP generator.

Two steps, so that the slow one runs once:

``detect``  runs CenterFace on every training image (UTKFace and CelebA from
            ``../shared/data/train``; never LFW), keeps the largest face, aligns it with
            :func:`identitydp.align.align_face` to a ``SIZE``-px crop at ``MARGIN`` and writes the raw
            uint8 crops (``<out>.raw.npy``, ~0.9 GB at 128 px) plus metadata (``<out>.meta.npz``).
``pack``    WebP-encodes the raw crops at the highest quality that keeps the bundle under
            ``--max-mb`` and writes one ``.npz`` (no pickles) with:

            ``blob``       uint8 (B,)      all encoded crops back to back
            ``offsets``    int64 (N+1,)    crop i is ``blob[offsets[i]:offsets[i+1]]``
            ``source``     int8 (N,)       0 = UTKFace, 1 = CelebA (89x109), 2 = CelebA 256-px crops
            ``identity``   int32 (N,)      CelebA identity id, -1 for UTKFace
            ``landmarks``  float16 (N,5,2) the 5 CenterFace points in crop pixels
            ``landmarks68`` float16 (N,68,2) dlib's 68 points on the aligned crop (pixel
                           centres at +0.5, :mod:`identitydp.models.landmarks68`)
            ``score``      float16 (N,)    detection score
            ``heldout``    bool (N,)       quick-evaluation faces (never trained on)
            ``names``      <U (N,)         file name relative to the training folder
            ``meta``       <U ()           JSON: size, margin, codec, quality, counts

The alignment margin (default 0.25 in :func:`identitydp.align.template_for`: a quarter more context
than the ArcFace framing, so some hair and background show) is part of the model: the inference
anonymizer must align with the same margin. It is stored in ``meta`` and in every checkpoint.

Identity embeddings are not stored (they would cost ~5 MB of the 32 MB budget); the trainer
computes them once at start-up with the differentiable dlib port (seconds on a GPU) and, on the
CPU, caches them next to the bundle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "train"
DEFAULT_OUT = REPO / ".data" / "train128"


def list_images(data: Path) -> tuple[list[str], list[int], list[int]]:
    """Return (relative names, source codes, CelebA identity ids) in a fixed order."""
    ids: dict[str, int] = {}
    for line in (data / "celeba_identity.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, ident = line.split()
        ids[name] = int(ident)
    names, sources, identities = [], [], []
    for path in sorted((data / "utkface").glob("*.jpg")):
        names.append(f"utkface/{path.name}")
        sources.append(0)
        identities.append(-1)
    for path in sorted((data / "celeba").glob("*.jpg")):
        names.append(f"celeba/{path.name}")
        sources.append(1)
        identities.append(ids.get(path.name, -1))
    # celeba256/: 256-px DeepFaceLab crops of CelebA photos; identities share CelebA's id space.
    ids256: dict[str, int] = {}
    id_file = data / "celeba256_identity.txt"
    if id_file.is_file():
        for line in id_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                ids256[parts[0]] = int(parts[2])
    for path in sorted((data / "celeba256").glob("*.jpg")):
        names.append(f"celeba256/{path.name}")
        sources.append(2)
        identities.append(ids256.get(path.name, -1))
    return names, sources, identities


def cmd_detect(args: argparse.Namespace) -> int:
    from identitydp.align import align_face, transform_points
    from identitydp.detect import CenterFaceDetector
    from identitydp.models.landmarks68 import Landmarks68, crop_face_box

    cv2.setNumThreads(args.threads)
    data = Path(args.data)
    names, sources, identities = list_images(data)
    if args.limit:
        idx = np.linspace(0, len(names) - 1, args.limit).round().astype(int)
        names, sources, identities = ([seq[i] for i in idx] for seq in (names, sources, identities))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = len(names)
    raw = np.lib.format.open_memmap(str(out) + ".raw.npy", mode="w+", dtype=np.uint8, shape=(n, args.size, args.size, 3))
    found = np.zeros(n, bool)
    landmarks = np.zeros((n, 5, 2), np.float32)
    landmarks68 = np.zeros((n, 68, 2), np.float32)
    scores = np.zeros(n, np.float32)
    detector = CenterFaceDetector(threshold=args.threshold)
    shape68 = Landmarks68()
    box68 = crop_face_box(args.size, args.margin)
    start = time.time()
    for i, name in enumerate(names):
        bgr = cv2.imread(str(data / name), cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"unreadable: {name}", file=sys.stderr)
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        det = detector.detect(rgb)
        if not len(det):
            continue
        # The training images are single-face crops: the largest box is the subject.
        areas = np.prod(det.boxes[:, 2:] - det.boxes[:, :2], axis=1)
        j = int(np.argmax(areas))
        aligned = align_face(rgb, det.landmarks[j], size=args.size, margin=args.margin)
        raw[i] = aligned.crop
        landmarks[i] = transform_points(det.landmarks[j], aligned.matrix)
        # 68-point geometry of the aligned crop: the v2 generator's pose/expression input and
        # the outline of the region it must repaint.
        landmarks68[i] = shape68.predict(aligned.crop, box68)
        scores[i] = det.scores[j]
        found[i] = True
        if (i + 1) % 1000 == 0:
            rate = (i + 1) / (time.time() - start)
            print(f"{i + 1}/{n} images, {found[: i + 1].sum()} faces, {rate:.1f} img/s", flush=True)
    raw.flush()
    np.savez(
        str(out) + ".meta.npz",
        names=np.array(names),
        source=np.array(sources, np.int8),
        identity=np.array(identities, np.int32),
        landmarks=landmarks,
        landmarks68=landmarks68,
        score=scores,
        found=found,
        meta=np.array(json.dumps({"size": args.size, "margin": args.margin, "threshold": args.threshold})),
    )
    print(f"done: {found.sum()}/{n} faces found in {time.time() - start:.0f} s", flush=True)
    return 0


def _encode(crop_rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".webp", cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise RuntimeError("WebP encoding failed")
    return buf.tobytes()


def choose_heldout(source: np.ndarray, identity: np.ndarray, seed: int = 0, n_utk: int = 150, n_ids: int = 100) -> np.ndarray:
    """Hold out random UTKFace faces and every image of random CelebA identities (>= 2 images)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(source), bool)
    utk = np.flatnonzero(source == 0)
    held[rng.choice(utk, size=min(n_utk, len(utk)), replace=False)] = True
    # CelebA identities span both CelebA folders: a held-out person is held out in both.
    ids, counts = np.unique(identity[(source >= 1) & (identity >= 0)], return_counts=True)
    multi = ids[counts >= 2]
    chosen = rng.choice(multi, size=min(n_ids, len(multi)), replace=False)
    held |= np.isin(identity, chosen) & (source >= 1)
    return held


def cmd_pack(args: argparse.Namespace) -> int:
    cv2.setNumThreads(1)
    out = Path(args.out)
    meta_npz = np.load(str(out) + ".meta.npz", allow_pickle=False)
    raw = np.load(str(out) + ".raw.npy", mmap_mode="r", allow_pickle=False)
    found = meta_npz["found"]
    keep = np.flatnonzero(found)
    meta = json.loads(str(meta_npz["meta"]))
    cap = int(args.max_mb * 1e6)
    # Metadata after compression: offsets, ids, landmarks, flags and names (about 1 byte a character).
    fixed = keep.size * (8 + 1 + 4 + 20 + 2 + 1) + sum(len(n) for n in meta_npz["names"][keep]) + 4096
    # Pick the quality from a sample, then verify on the full set and step down if needed.
    sample = keep[:: max(1, keep.size // 400)]
    quality = None
    for q in range(args.max_quality, 29, -5):
        est = np.mean([len(_encode(np.asarray(raw[i]), q)) for i in sample]) * keep.size + fixed
        if est <= cap * 0.97:
            quality = q
            break
    if quality is None:
        raise SystemExit(f"cannot fit {keep.size} crops in {args.max_mb} MB even at quality 30")
    while True:
        blobs = [_encode(np.asarray(raw[i]), quality) for i in keep]
        total = sum(map(len, blobs)) + fixed
        if total <= cap or quality <= 30:
            break
        quality -= 5
    offsets = np.zeros(keep.size + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    source = meta_npz["source"][keep]
    identity = meta_npz["identity"][keep]
    heldout = choose_heldout(source, identity)
    meta.update(
        codec="webp",
        quality=quality,
        count=int(keep.size),
        utkface=int((source == 0).sum()),
        celeba=int((source == 1).sum()),
        celeba256=int((source == 2).sum()),
        heldout=int(heldout.sum()),
        not_detected=int((~found).sum()),
        landmark_order="left eye, right eye, nose, left mouth, right mouth (crop pixels)",
    )
    path = out.with_suffix(".npz")
    # Compressed so that the metadata (names especially) costs little; the WebP bytes don't shrink.
    np.savez_compressed(
        path,
        blob=np.frombuffer(b"".join(blobs), np.uint8),
        offsets=offsets,
        source=source,
        identity=identity,
        landmarks=meta_npz["landmarks"][keep].astype(np.float16),
        landmarks68=meta_npz["landmarks68"][keep].astype(np.float16),
        score=meta_npz["score"][keep].astype(np.float16),
        heldout=heldout,
        names=meta_npz["names"][keep],
        meta=np.array(json.dumps(meta)),
    )
    print(json.dumps({"bundle": str(path), "bytes": path.stat().st_size, **meta}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detect", help="detect + align every training image (slow, run once)")
    d.add_argument("--data", default=str(DEFAULT_DATA))
    d.add_argument("--out", default=str(DEFAULT_OUT), help="output prefix (default .data/train128)")
    d.add_argument("--size", type=int, default=128)
    d.add_argument("--margin", type=float, default=0.25)
    d.add_argument("--threshold", type=float, default=0.5)
    d.add_argument("--limit", type=int, default=0, help="only this many images, spread evenly (tests)")
    d.add_argument("--threads", type=int, default=1, help="OpenCV threads for detection")
    d.set_defaults(func=cmd_detect)
    p = sub.add_parser("pack", help="encode the aligned crops into one compact .npz")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--max-mb", type=float, default=32.0)
    p.add_argument("--max-quality", type=int, default=90)
    p.set_defaults(func=cmd_pack)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
