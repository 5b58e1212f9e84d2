#!/usr/bin/env python
"""Fit the public attribute directions of identity space that ``--keep`` releases without noise.

From the UTKFace faces of the training bundle (public training data, never LFW or user images;
age and gender from the UTKFace file names ``AGE_GENDER_RACE_DATE``, gender 0 = male, 1 =
female) and their dlib descriptors (the bundle's ``.dlib128.npy`` cache, written by the trainer),
centred with the shipped generator's mean exactly as the pipeline centres them:

- gender: Fisher's linear discriminant (class-mean difference through the shrunk within-class
  covariance), unit length;
- age: ridge regression of age on the embedding, its direction made orthogonal to gender;
- the mean and covariance of every non-held-out training identity (centred, unit), from which
  ``--keep`` builds the noise domain of the rest of the identity given the kept values.

Both are checked on the held-out 20 % (gender accuracy of the projection's sign at the training
midpoint; age MAE of the linear prediction) and written with those figures to a small
safetensors file with a SHA-256 in its metadata.

    python scripts/fit_attributes.py --bundle .data/v2_128.npz -o src/identitydp/weights/attribute_directions.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path(".data/v2_128.npz"))
    ap.add_argument("--shrink", type=float, default=0.1, help="covariance shrinkage towards the identity")
    ap.add_argument("--ridge", type=float, default=1e-2)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args()

    from identitydp.generate.anonymizer import WEIGHTS_NAME
    from identitydp.generate.checkpoint import load_generator
    from identitydp.models.registry import weight_path
    from identitydp.privacy import centre

    data = np.load(args.bundle)
    names = data["names"]
    heldout = data["heldout"]
    raw = np.load(f"{args.bundle}.dlib128.npy").astype(np.float64)
    mean = load_generator(weight_path(WEIGHTS_NAME))[1].cpu().numpy().astype(np.float64)  # the pipeline's centring
    rows, ages, genders = [], [], []
    for i, name in enumerate(names):
        if not name.startswith("utkface/") or heldout[i]:
            continue
        parts = Path(name).name.split("_")
        if len(parts) < 4 or not parts[0].isdigit() or parts[1] not in ("0", "1"):
            continue
        rows.append(i)
        ages.append(int(parts[0]))
        genders.append(int(parts[1]))
    z = centre(raw[rows], mean)
    ages, genders = np.asarray(ages, np.float64), np.asarray(genders)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(z))
    cut = int(0.8 * len(z))
    fit, test = order[:cut], order[cut:]

    # Gender: Fisher discriminant.
    zf, gf = z[fit], genders[fit]
    mu0, mu1 = zf[gf == 0].mean(0), zf[gf == 1].mean(0)
    within = np.cov(np.concatenate([zf[gf == 0] - mu0, zf[gf == 1] - mu1]).T)
    within = (1 - args.shrink) * within + args.shrink * np.trace(within) / within.shape[0] * np.eye(within.shape[0])
    w_gender = np.linalg.solve(within, mu1 - mu0)
    w_gender /= np.linalg.norm(w_gender)
    midpoint = float(((mu0 + mu1) / 2) @ w_gender)
    acc = float(np.mean(((z[test] @ w_gender) > midpoint) == (genders[test] == 1)))

    # Age: ridge regression, then orthogonal to gender.
    xf = np.c_[z[fit], np.ones(len(fit))]
    beta = np.linalg.solve(xf.T @ xf + args.ridge * len(fit) * np.diag([1.0] * 128 + [0.0]), xf.T @ ages[fit])
    pred = np.c_[z[test], np.ones(len(test))] @ beta
    mae = float(np.mean(np.abs(pred - ages[test])))
    w_age = beta[:128] - (beta[:128] @ w_gender) * w_gender
    w_age /= np.linalg.norm(w_age)

    directions = np.stack([w_gender, w_age])

    # The public Gaussian of identities (all non-held-out training faces, labelled or not): what the
    # kept-attribute projection conditions on (identitydp.privacy.keep.ConditionalProjection).
    every = np.flatnonzero(~heldout.astype(bool))
    z_all = centre(raw[every], mean)
    gauss_mean = z_all.mean(0)
    covariance = np.cov(z_all.T)
    from identitydp.privacy.keep import AttributeDirections, ConditionalProjection

    fitted = AttributeDirections(("gender", "age"), directions, {}, gauss_mean, covariance)
    inside = {}
    for keep in (("gender",), ("age",), ("gender", "age")):
        proj = ConditionalProjection(fitted.select(keep).directions, gauss_mean, covariance)
        inside["+".join(keep)] = round(float(np.mean(np.linalg.norm(proj.whiten(z_all), axis=1) <= proj.radius)), 4)
    info = {
        "format": "identitydp-attribute-directions/1",
        "names": ["gender", "age"],
        "source": f"UTKFace faces of {args.bundle.name} (training data, never LFW): {len(z)} faces, "
                  f"{len(fit)} to fit, {len(test)} held out; dlib ResNet v1 descriptors centred by the shipped generator mean",
        "heldout_gender_accuracy": round(acc, 4),
        "heldout_age_mae_years_linear": round(mae, 2),
        "gender_midpoint": midpoint,
        "gender_positive": "female (UTKFace gender 1)",
        "gaussian_source": f"{len(every)} non-held-out training faces of {args.bundle.name} (UTKFace + CelebA), centred and unit",
        "training_faces_inside_radius": inside,
    }
    save_file({"directions": directions, "mean": gauss_mean, "covariance": covariance}, str(args.output),
              metadata={"info": json.dumps(info)})
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
