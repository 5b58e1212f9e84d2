#!/usr/bin/env python
"""Probe: does one identity direction decide whether the v2 renderer paints blotchy skin?

1. Fit, on the training bundle only (never LFW), the direction of centred dlib identity space
   that best predicts a face's skin luminance (ridge regression of the mean luminance of the
   cheeks, between the eyes and the mouth from the 68 landmarks, on the descriptor), made
   orthogonal to the registered gender and age directions. Prints the held-out R².
2. Render LFW faces (evaluation data, the first photo of people spread over the alphabet) with the
   registered renderer at ε with the gender from the context, one seeded release per face, and
   that release with its coordinate along the direction set to (a) what the face's own luminance
   predicts, (b) ``--low`` and (c) ``--high``. Writes a grid: rows = faces; columns = photo,
   release, (a), (b), (c), each the aligned crop with the repaint pasted in.

A research probe (seeded, so not private), not part of the product. Result and picture:
docs/generator_card.md, "2026-12-07 (d)".

    python scripts/probe_blotch_direction.py -o docs/results/lfw300-context-knob/skin_direction_probe.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))


def cheek_luminance(image: np.ndarray, lm68: np.ndarray) -> float:
    """Mean luminance (0–255) of the box between the jaw sides, below the eyes and above the
    mouth; NaN where the landmarks leave no box. ``image`` (S, S, 3) RGB uint8, ``lm68`` (68, 2)."""
    x0, x1 = int(lm68[1, 0]) + 2, int(lm68[15, 0]) - 2
    y0, y1 = int(lm68[36:48, 1].mean()) + 4, int(lm68[48:68, 1].mean()) - 3
    if x1 <= x0 + 4 or y1 <= y0 + 2:
        return float("nan")
    patch = image[max(y0, 0):y1, max(x0, 0):x1].reshape(-1, 3)
    if len(patch) == 0:  # landmarks off the crop
        return float("nan")
    c = patch.astype(np.float64).mean(0)
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def fit_direction(bundle: Path, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """(128,) unit direction and (2,) line luminance → coordinate, from the training bundle."""
    import torch

    from identitydp.generate.anonymizer import WEIGHTS_NAME
    from identitydp.generate.checkpoint import load_generator
    from identitydp.models.registry import weight_path
    from identitydp.privacy import centre
    from identitydp.privacy.keep import AttributeDirections
    from identitydp.training.data import load_bundle

    data = load_bundle(bundle, size=128, device=torch.device("cpu"), threads=1)
    raw = np.load(f"{bundle}.dlib128.npy").astype(np.float64)
    z = centre(raw, load_generator(weight_path(WEIGHTS_NAME))[1].cpu().numpy().astype(np.float64))
    images, lm = data.images.numpy(), data.landmarks68.numpy()
    lum = np.array([cheek_luminance(images[i], lm[i]) for i in range(len(data))])
    ok = np.isfinite(lum)
    held = data.heldout.numpy().astype(bool)
    train, test = ok & ~held, ok & held
    centre_l = lum[train].mean()
    a = z[train]
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (lum[train] - centre_l))
    pred = z[test] @ w + centre_l
    r2 = 1 - np.mean((pred - lum[test]) ** 2) / np.var(lum[test])
    kept = AttributeDirections.load().directions
    u = w - kept.T @ (kept @ w)
    u /= np.linalg.norm(u)
    coord = z @ u
    line = np.polyfit(lum[train], coord[train], 1)
    print(f"direction fitted on {train.sum()} training faces: held-out R² {r2:.3f}, correlation of the "
          f"coordinate with luminance {np.corrcoef(coord[test], lum[test])[0, 1]:.3f}, spread {coord[train].std():.3f}")
    return u, line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, default=REPO / ".data" / "v2_128.npz")
    ap.add_argument("--lfw", type=Path, default=REPO.parent / "shared" / "data" / "lfw")
    ap.add_argument("--faces", type=int, default=10)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--low", type=float, default=-0.25)
    ap.add_argument("--high", type=float, default=0.25)
    ap.add_argument("--ridge", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    from compare_renderers import pick_images

    from identitydp.align import align_face
    from identitydp.detect import CenterFaceDetector
    from identitydp.generate.anonymizer import IdentityDPAnonymizer
    from identitydp.io import read_image

    u, line = fit_direction(args.bundle, args.ridge)
    anon = IdentityDPAnonymizer(epsilon=args.epsilon, seed=args.seed, gender_from_context=True)
    detector = CenterFaceDetector()
    rows = []
    for path in pick_images(args.lfw, args.faces):
        image = read_image(path).pixels
        faces = detector.detect(image)
        if len(faces) == 0:
            continue
        k = int(np.argmax((faces.boxes[:, 2] - faces.boxes[:, 0]) * (faces.boxes[:, 3] - faces.boxes[:, 1])))
        crop = align_face(image, faces.landmarks[k], size=anon.size, margin=anon.margin).crop
        z = anon._identities(image, faces.landmarks[k][None])
        kept, lm68 = anon._context_gender([crop])
        release = np.asarray(anon.mechanism.perturb(z, kept).embeddings, np.float64).reshape(1, -1)
        own = float(np.polyval(line, cheek_luminance(crop, lm68[0])))
        row = [crop]
        for target in (None, own, args.low, args.high):
            zz = release.copy()
            if target is not None:
                zz = zz + (target - zz @ u)[:, None] * u
                zz /= np.linalg.norm(zz)
            face, mask = anon.inpaint(crop, zz, noise_seed=1, landmarks68=lm68[0])
            m = mask[..., None] if mask.ndim == 2 else mask
            row.append((face * m + crop * (1 - m)).round().clip(0, 255).astype(np.uint8))
        print(f"{path.name}: release {float((release @ u)[0]):+.3f}, from the luminance {own:+.3f}")
        rows.append(np.concatenate(row, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
