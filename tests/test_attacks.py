"""The attack metrics of identitydp.eval.attacks on synthetic embeddings with known answers
(the attacks on real anonymized LFW faces run in test_eval's quick run)."""

from __future__ import annotations

import numpy as np
import pytest

from identitydp.eval.attacks import RidgeAdapter, average_draws, rank1_vs_gallery_size
from identitydp.eval.metrics import rank1


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gallery_size_curve_matches_rank1_and_chance(metric):
    rng = np.random.default_rng(0)
    gallery = _unit(rng.normal(size=(200, 32)))
    probe = _unit(gallery + 0.9 * rng.normal(size=gallery.shape) / np.sqrt(32) * 4)
    curve = rank1_vs_gallery_size(probe, gallery, metric, sizes=(2, 10, 50, 500))
    assert sorted(curve) == [2, 10, 50, 200]  # 500 > P dropped, P added
    assert curve[200] == pytest.approx(rank1(probe, gallery, metric).mean())
    values = [curve[g] for g in sorted(curve)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # more people to tell apart: never easier
    # unrelated probes: exactly chance on average (1/G), within sampling noise of 200 probes
    noise = _unit(rng.normal(size=(200, 32)))
    chance = rank1_vs_gallery_size(noise, gallery, metric, sizes=(2, 10))
    assert chance[2] == pytest.approx(0.5, abs=0.06) and chance[10] == pytest.approx(0.1, abs=0.04)


def test_gallery_size_curve_by_brute_force():
    """The closed form equals sampling distractor sets."""
    rng = np.random.default_rng(1)
    gallery = _unit(rng.normal(size=(40, 8)))
    probe = _unit(gallery + 0.5 * rng.normal(size=gallery.shape))
    exact = rank1_vs_gallery_size(probe, gallery, "cosine", sizes=(5,))[5]
    d = 1 - probe @ gallery.T
    hits = []
    for i in range(40):
        others = np.delete(np.arange(40), i)
        for _ in range(400):
            pick = rng.choice(others, 4, replace=False)
            hits.append(d[i, i] < d[i, pick].min())
    assert exact == pytest.approx(np.mean(hits), abs=0.02)


def test_ridge_adapter_undoes_a_linear_scramble():
    """An 'anonymizer' that rotates and mixes the embedding hides it from a plain matcher; the
    trained attacker, fitted on other faces' pairs, undoes it."""
    rng = np.random.default_rng(2)
    mix = rng.normal(size=(64, 64))
    train_orig = _unit(rng.normal(size=(400, 64)))
    train_anon = train_orig @ mix + 0.05 * rng.normal(size=(400, 64))
    adapter = RidgeAdapter.fit(train_anon, train_orig, "cosine")
    assert adapter.heldout_rank1 > 0.95 and adapter.identity_heldout_rank1 < 0.2
    test_orig = _unit(rng.normal(size=(100, 64)))
    test_anon = test_orig @ mix
    assert rank1(test_anon, test_orig, "cosine").mean() < 0.2
    assert rank1(adapter.apply(test_anon, "cosine"), test_orig, "cosine").mean() > 0.95


def test_ridge_adapter_learns_nothing_from_noise():
    rng = np.random.default_rng(3)
    adapter = RidgeAdapter.fit(rng.normal(size=(300, 32)), rng.normal(size=(300, 32)), "euclidean")
    test_orig = rng.normal(size=(100, 32))
    assert rank1(adapter.apply(rng.normal(size=(100, 32)), "euclidean"), test_orig, "euclidean").mean() < 0.08
    with pytest.raises(ValueError, match="aligned pairs"):
        RidgeAdapter.fit(np.zeros((5, 4)), np.zeros((5, 4)), "cosine")


def test_average_draws_normalises_for_cosine():
    a = np.array([[10.0, 0.0]])
    b = np.array([[0.0, 1.0]])
    np.testing.assert_allclose(average_draws([a, b], "cosine"), [[0.5, 0.5]])
    np.testing.assert_allclose(average_draws([a, b], "euclidean"), [[5.0, 0.5]])


def test_ridge_adapter_never_worse_than_matching_as_is():
    """For a method that changes nothing the attacker keeps the identity map (no loss from fitting)."""
    rng = np.random.default_rng(4)
    train = _unit(rng.normal(size=(60, 128)))
    adapter = RidgeAdapter.fit(train + 0.01 * rng.normal(size=train.shape), train, "cosine")
    test = _unit(rng.normal(size=(100, 128)))
    noisy = test + 0.6 * rng.normal(size=test.shape) / np.sqrt(128) * 3
    assert rank1(adapter.apply(noisy, "cosine"), test, "cosine").mean() >= rank1(noisy, test, "cosine").mean() - 0.02
