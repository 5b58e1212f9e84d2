"""The evaluation suite: unit tests of its parts, and the sanity of a quick run on real LFW.

The quick run (``identitydp eval --quick`` with the sanity methods, 100 LFW people) asserts:
no-op is re-identified (dlib rank-1 ≥ 90 %), a solid mask is not (rank-1 within a few points of
chance, BlazeFace detection near 0), blur is monotone in σ, and the attacks (linkage, trained
attacker on UTKFace pairs, rank-1 vs gallery size) behave as they must on those anchors.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from identitydp.eval import EvalConfig, EvalConfigError, expand_methods, parse_method_spec
from identitydp.eval.cache import ArrayCache
from identitydp.eval.metrics import far_threshold, frechet_distance, landmark_nme, rank1, wilson_interval
from identitydp.eval.results import DONE, append_lines, latest_batches, read_lines


# ---------------------------------------------------------------- grammar and config
def test_method_grammar():
    assert [s.key for s in parse_method_spec("blur:sigma=0.05,0.1,0.2")] == [
        "blur:sigma=0.05",
        "blur:sigma=0.1",
        "blur:sigma=0.2",
    ]
    grid = parse_method_spec("identitydp:epsilon=1,inf;mechanism=laplace,gaussian")
    assert len(grid) == 4
    assert grid[1].kwargs() == {"epsilon": 1, "mechanism": "gaussian"}
    assert math.isinf(grid[2].kwargs()["epsilon"]) and grid[2].key == "identitydp:epsilon=inf;mechanism=laplace"
    assert parse_method_spec("pixelate:blocks=8")[0].kwargs() == {"blocks": 8}
    assert [s.key for s in expand_methods(["noop", "mask", "noop"])] == ["noop", "mask"]
    for bad in ("", ":sigma=1", "blur:sigma", "noop:x=1", "blur:sigma=1;sigma=2"):
        with pytest.raises(EvalConfigError):
            parse_method_spec(bad)


def test_config_merge_keeps_protocol(tmp_path):
    base = EvalConfig.quick(tmp_path, methods=["noop", "blur:sigma=0.1"])
    added = EvalConfig.quick(tmp_path, methods=["blur:sigma=0.1,0.2"])
    merged = added.merged_with(base)
    assert [s.key for s in merged.settings()] == ["noop", "blur:sigma=0.1", "blur:sigma=0.2"]
    with pytest.raises(EvalConfigError, match="another protocol"):
        EvalConfig.quick(tmp_path, people=50).merged_with(base)
    path = tmp_path / "config.json"
    merged.save(path)
    assert EvalConfig.load(path) == merged


# ---------------------------------------------------------------- metrics
def test_rank1_and_far_threshold():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 16))
    probe = gallery + 0.01 * rng.normal(size=gallery.shape)
    assert rank1(probe, gallery, "cosine").all()
    assert rank1(probe, gallery, "euclidean").all()
    # a constant probe (a destroyed face) is never a hit, even on ties
    assert not rank1(np.ones_like(gallery), np.ones_like(gallery), "euclidean").any()
    d = np.arange(1, 1001, dtype=float)
    thr, far = far_threshold(d, 0.001)
    assert thr == 1.0 and far == 0.0  # k = 1: nothing strictly below the smallest impostor
    thr, far = far_threshold(d, 0.01)
    assert thr == 10.0 and far == pytest.approx(0.009)
    lo, hi = wilson_interval(5, 100)
    assert lo < 0.05 < hi


def test_frechet_and_nme():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert frechet_distance(a, b) < 0.3
    assert frechet_distance(a, b + 3.0) == pytest.approx(72.0, rel=0.1)
    ref = rng.normal(size=(3, 468, 2))
    assert np.allclose(landmark_nme(ref + [3.0, 4.0], ref, np.full(3, 10.0)), 0.5)


def test_cache_roundtrip(tmp_path):
    cache = ArrayCache(tmp_path, "judge-abc")
    cache.put("a.jpg|g1", {"emb": np.arange(3.0), "age": np.float32(30)})
    cache.flush()
    again = ArrayCache(tmp_path, "judge-abc")
    assert "a.jpg|g1" in again and "b" not in again
    assert np.array_equal(again.get("a.jpg|g1")["emb"], np.arange(3.0))
    assert ArrayCache(tmp_path, "judge-abc", enabled=False).get("a.jpg|g1") is None


def test_results_latest_batch(tmp_path):
    path = tmp_path / "results.jsonl"
    append_lines(path, [{"setting": "mask", "metric": "rank1", "batch": "1", "value": 0.5}])  # interrupted
    append_lines(path, [{"setting": "mask", "metric": "rank1", "batch": "2", "value": float("nan")},
                        {"setting": "mask", "metric": DONE, "batch": "2", "value": 3.0}])
    with open(path, "a") as fh:
        fh.write('{"torn')
    latest = latest_batches(read_lines(path))
    assert [l["value"] for l in latest["mask"]] == [None, 3.0]


# ---------------------------------------------------------------- quick run on LFW
SANITY_METHODS = ["noop", "mask", "blur:sigma=0.05,0.1,0.2"]


@pytest.fixture(scope="module")
def quick_run(lfw_dir, tmp_path_factory):
    """``identitydp eval --quick`` restricted to the sanity methods (deface is tested apart: its
    CLI start-up is slow), with few images for the speed and diversity stages."""
    from identitydp.cli import main

    out = tmp_path_factory.mktemp("eval-quick")
    argv = ["eval", "--quick", "--lfw", str(lfw_dir), "--out", str(out), "--cache", str(out / "cache"),
            "--no-progress", "--speed-images", "2", "--methods", *SANITY_METHODS]
    assert main(argv) == 0  # single-threaded; EvalRun restores the thread counts afterwards
    return out


def _value(results: list[dict], setting: str, metric: str, judge: str | None = None) -> float:
    latest = latest_batches(results)[setting]
    found = [l["value"] for l in latest if l["metric"] == metric and (judge is None or l["judge"] == judge)]
    assert found, f"{setting} has no {metric} {judge}"
    return found[0]


@pytest.mark.slow
def test_quick_run_sanity(quick_run):
    results = read_lines(quick_run / "results.jsonl")
    chance = _value(results, "reference", "chance_rank1")
    assert chance == pytest.approx(0.01)
    # no-op: the same face; the white-box judge re-identifies it
    assert _value(results, "noop", "rank1", "dlib") >= 0.90
    assert _value(results, "noop", "verify_accept", "dlib") == 1.0
    assert _value(results, "noop", "landmark_nme") == pytest.approx(0.0, abs=1e-6)
    # solid mask: re-identification within a few points of chance for every judge (hair and
    # background are left: faceres, whose 224 px crop sees most context, reaches ~4 %), and
    # BlazeFace (score >= 0.75) finds almost nothing
    for judge in ("dlib", "mobileface", "faceres"):
        assert _value(results, "mask", "rank1", judge) <= chance + 0.05, judge
        assert _value(results, "mask", "verify_accept", judge) <= 0.05, judge
    assert _value(results, "mask", "detect_rate") <= 0.08
    # blur: a larger sigma never re-identifies more (per judge). At the chance floor (1 % = one
    # probe of 100) one or two probes either way is sampling noise, hence the 2-probe tolerance.
    for judge in ("dlib", "mobileface"):
        r = [_value(results, f"blur:sigma={s}", "rank1", judge) for s in ("0.05", "0.1", "0.2")]
        assert r[1] <= r[0] + 0.02 and r[2] <= r[1] + 0.02 and r[2] < r[0], (judge, r)
    # pixel-domain methods never touch pixels outside the face regions
    for setting in ("noop", "mask", "blur:sigma=0.1"):
        assert _value(results, setting, "outside_max_change") == 0
    # attacks: a released original is linked to its person's other released photo, and the
    # exact gallery-size curve ends at the run's own rank-1 and never rises with more people
    assert _value(results, "noop", "linkage_rank1", "dlib") >= 0.90
    # linkage averages both directions over each draw of the anonymized gallery (one draw for a
    # deterministic method: two comparisons)
    link = [l for l in latest_batches(results)["mask"] if l["metric"] == "linkage_rank1" and l["judge"] == "mobileface"][0]
    assert link["extra"]["comparisons"] == 2 == len(link["extra"]["counts"])
    assert link["value"] == pytest.approx(sum(link["extra"]["counts"]) / (2 * 100))
    assert _value(results, "noop", "attacker_rank1", "dlib") >= _value(results, "noop", "rank1", "dlib") - 0.03
    for setting in ("noop", "mask", "blur:sigma=0.2"):
        curve = [l for l in latest_batches(results)[setting] if l["metric"] == "rank1_vs_gallery" and l["judge"] == "mobileface"][0]
        direct = curve["extra"]["direct"]
        assert curve["extra"]["sizes"][-1] == 100 and direct[-1] == pytest.approx(_value(results, setting, "rank1", "mobileface"))
        assert all(a >= b - 1e-12 for a, b in zip(direct, direct[1:])), (setting, direct)
        assert curve["extra"]["attacker"] and curve["extra"]["linkage"]
    # the trained attacker learnt on training faces only, and says so
    att = [l for l in latest_batches(results)["mask"] if l["metric"] == "attacker_rank1"][0]
    assert att["extra"]["train_source"] == "utkface" and att["extra"]["train_pairs"] >= 80
    # every line carries the code version and protocol; the report and plots exist
    line = results[-1]
    assert line["code"]["commit"] and line["protocol"]["people"] == 100
    for name in ("report.md", "frontier.png", "samples.png", "config.json", "privacy_curve.json", "attacks.png"):
        assert (quick_run / name).is_file(), name
    curve = json.loads((quick_run / "privacy_curve.json").read_text())
    assert curve["format"].startswith("identitydp-privacy-curve") and curve["floor_mask"]["mobileface"]["rank1"]["n"] == 100
    # the mean distance to the own original: nothing for the face itself, near two different
    # people's (recorded with the threshold) for the solid mask
    batches = latest_batches(results)
    accept = {st: [l for l in batches[st] if l["metric"] == "verify_accept" and l["judge"] == "mobileface"][0]
              for st in ("noop", "mask")}
    two_people = [l for l in batches["reference"] if l["metric"] == "far_threshold" and l["judge"] == "mobileface"][0]
    assert accept["noop"]["extra"]["mean_distance"] == pytest.approx(0.0, abs=1e-3)
    assert accept["mask"]["extra"]["mean_distance"] > 0.8 * two_people["extra"]["mean_impostor_distance"] > 0.5
    report = (quick_run / "report.md").read_text()
    assert "| blur | sigma=0.2 |" in report and "## Attacks" in report and "both directions" in report
    assert "Mean distance of each anonymized face" in report and "two different people's photos: dlib" in report
    assert json.loads((quick_run / "config.json").read_text())["people"] == 100


@pytest.mark.slow
def test_deface_external_tool(lfw_images):
    """deface runs as a CLI on a temp folder and blurs the face; skipped clearly when absent."""
    from identitydp.eval.config import Setting
    from identitydp.eval.methods import DefaceRunner, MethodUnavailable, deface_executable
    from identitydp.io import read_image

    if deface_executable() is None:
        with pytest.raises(MethodUnavailable, match="not installed"):
            DefaceRunner(Setting("deface"))
        pytest.skip("deface CLI not installed")
    images = [read_image(p).pixels for p in lfw_images[:3]]
    result = DefaceRunner(Setting("deface")).run(images, [None] * 3)
    for im, out in zip(images, result.images):
        assert out.shape == im.shape
        diff = np.abs(out.astype(int) - im.astype(int)).max(axis=2)
        assert diff[100:150, 100:150].mean() > 5  # the centred LFW face is blurred
        assert diff[:10, :10].max() == 0  # the corner is not


@pytest.mark.slow
def test_quick_run_resumes_and_extends(quick_run, lfw_dir):
    """A second invocation skips complete settings and only adds the new one."""
    from identitydp.eval import EvalConfig
    from identitydp.eval.runner import EvalRun

    before = len(read_lines(quick_run / "results.jsonl"))
    config = EvalConfig.quick(lfw_dir, methods=["noop", "pixelate:blocks=8"], speed_images=2)
    run = EvalRun(config, quick_run, cache_dir=quick_run / "cache", progress=False)
    status = run.run()
    assert status == {"noop": "skipped (complete)", "pixelate:blocks=8": "done"}
    lines = read_lines(quick_run / "results.jsonl")
    assert all(l["setting"] == "pixelate:blocks=8" for l in lines[before:])
    assert "pixelate:blocks=8" in [s.key for s in EvalConfig.load(quick_run / "config.json").settings()]
