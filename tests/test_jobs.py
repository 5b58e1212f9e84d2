"""The job layer and the durable ledger: crash safety, concurrency, budgets, resuming, batch engines.

Everything runs on real face photos through the real CLI / job / SQLite ledger; crashes are real
``kill -9`` of real processes.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import read_ledger
from identitydp.cli import main as cli_main
from identitydp.errors import BudgetExceededError, PrivacyError
from identitydp.jobs import AnonymizerConfig, Job, plan_job
from identitydp.jobs.config import ConfigError
from identitydp.privacy.cost import PrivacyCost
from identitydp.privacy.store import Charge, LedgerStore

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "group.jpg"


def _cost(eps: float = 1.0) -> PrivacyCost:
    return PrivacyCost(mechanism="laplace", epsilon=eps, delta=0.0, relation="any two faces", domain="test")


@pytest.fixture()
def photos(tmp_path, bundled_faces) -> Path:
    """A folder of 12 single-face photos, each with different pixels (the bundled public-domain
    faces, shifted and brightened), so that the ledger sees 12 different inputs; no data needed."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(12):
        face = np.asarray(Image.open(bundled_faces[k % len(bundled_faces)]).convert("RGB")).astype(np.int16)
        canvas = np.full((300, 300, 3), 60 + 12 * k, np.int16)
        dx, dy = 10 + 3 * k, 20 + 2 * (k % 5)
        canvas[dy:dy + 250, dx:dx + 250] = face + (k // 4) * 6
        Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).save(folder / f"person_{k:02d}.jpg", quality=92)
    return folder


def _outputs(folder: Path) -> list[Path]:
    """Finished outputs (not our hidden temporary files)."""
    return [p for p in folder.rglob("*.jpg") if not p.name.startswith(".")]


def _cli_env(ledger: Path) -> dict:
    return {**os.environ, "IDENTITYDP_LEDGER": str(ledger), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _assert_ledger_matches_outputs(ledger: Path, out: Path, faces_per_output: int | None = None) -> dict:
    """Every output on disk has its releases on the ledger exactly once, and nothing else is spent."""
    data = read_ledger(ledger)
    assert data["releases"]["pending"] == 0, "a finished run leaves nothing pending"
    released = [r for r in data["release_log"] if r["status"] == "released"]
    on_disk = {str(p.resolve()) for p in _outputs(out)}
    assert not [p for p in out.rglob(".identitydp-*")], "stale temporary files were cleaned up"
    assert {r["output"] for r in released} == on_disk
    per_key: dict[str, int] = {}
    for r in released:
        per_key[r["key"]] = per_key.get(r["key"], 0) + 1
    assert all(n == 1 for n in per_key.values()), f"a face charged twice: {per_key}"
    if faces_per_output is not None:
        assert len(released) == faces_per_output * len(on_disk)
    return data


# ------------------------------------------------------------------------------- the store
def test_store_keys_follow_the_face_not_the_order_or_threshold(tmp_path):
    store = LedgerStore(tmp_path / "l.sqlite")
    boxes = [[10, 10, 60, 70], [100, 20, 150, 80], [200, 30, 240, 80]]
    keys = store.face_keys("ab" * 32, boxes)
    assert len(set(keys)) == 3
    # Another detection order, slightly moved boxes, a higher threshold that drops one face:
    assert store.face_keys("ab" * 32, [[201, 31, 241, 79], [11, 9, 61, 71]]) == [keys[2], keys[0]]
    # A new face of the same photo gets a new key; another photo has its own keys.
    assert store.face_keys("ab" * 32, [[300, 30, 350, 90]])[0] not in keys
    assert not set(store.face_keys("cd" * 32, boxes)) & set(keys)


def test_store_charge_is_all_or_nothing_and_void_is_not_spent(tmp_path):
    store = LedgerStore(tmp_path / "l.sqlite")
    store.set_budget(2.0)
    ids = store.charge("item", [Charge("k0", _cost()), Charge("k1", _cost())], output=tmp_path / "o.jpg")
    assert store.spent("k0")[0] == 1.0  # pending counts as spent
    store.settle(ids, "released")
    with pytest.raises(BudgetExceededError):
        store.charge("item", [Charge("k0", _cost(0.5)), Charge("k1", _cost(1.5))])
    assert store.spent("k0")[0] == 1.0  # the refused batch recorded nothing
    ids = store.charge("item2", [Charge("k0", _cost())])
    store.settle(ids, "void", note="never written")
    assert store.spent("k0") == (1.0, 0.0, 1)
    assert [r["status"] for r in store.releases()] == ["released", "released", "void"]  # kept, not deleted


def test_budget_only_tightens_without_a_logged_override(tmp_path):
    path = tmp_path / "l.sqlite"
    store = LedgerStore(path)
    assert store.set_budget(4.0) == 4.0
    assert store.set_budget(None) == 4.0  # no --budget: the stored one holds
    assert store.set_budget(3.0) == 3.0  # lowering is fine
    with pytest.raises(PrivacyError, match="cannot raise"):
        store.set_budget(10.0)
    with pytest.raises(PrivacyError):
        store.set_budget(10.0, override=True)  # no reason
    assert store.set_budget(10.0, override=True, reason="second study, approved") == 10.0
    kinds = [e["kind"] for e in store.events()]
    assert kinds == ["budget-set", "budget-set", "budget-raised"]


def _charge_many(path: str, key_prefix: str, n: int, budget_key: str) -> None:
    store = LedgerStore(path)
    for i in range(n):
        store.settle(store.charge(f"{key_prefix}{i}", [Charge(f"{key_prefix}{i}", _cost())]), "released")
        try:
            store.settle(store.charge("shared", [Charge(budget_key, _cost())]), "released")
        except BudgetExceededError:
            pass


def test_two_processes_on_one_ledger_lose_nothing_and_never_overspend(tmp_path):
    path = tmp_path / "l.sqlite"
    store = LedgerStore(path)
    store.set_budget(25.0)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_charge_many, args=(str(path), prefix, 60, "contested")) for prefix in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    data = store.export()
    mine = [r for r in data["release_log"] if r["key"] != "contested"]
    assert len(mine) == 120 and {r["key"] for r in mine} == {f"{p}{i}" for p in "ab" for i in range(60)}
    # 120 attempts on one face with a budget of 25: exactly 25 got through, from both processes.
    assert store.spent("contested")[0] == 25.0


def _die_after_charge(path: str, output: str, write_output: bool) -> None:
    store = LedgerStore(path)
    store.charge("item", [Charge("face", _cost())], output=output)
    if write_output:
        Path(output).write_bytes(b"complete output")
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("written", [False, True])
def test_recovery_after_kill_9_between_charge_and_settle(tmp_path, written):
    path = tmp_path / "l.sqlite"
    output = tmp_path / "o.jpg"
    p = mp.get_context("spawn").Process(target=_die_after_charge, args=(str(path), str(output), written))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    store = LedgerStore(path)
    assert [r["status"] for r in store.releases()] == ["pending"]
    assert store.recover() == ({"released": 1, "void": 0} if written else {"released": 0, "void": 1})
    assert store.spent("face")[0] == (1.0 if written else 0.0)


# ------------------------------------------------------------------------------ CLI / jobs
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_killed_midway_then_rerun_matches_the_outputs(tmp_path, photos, sig):
    from PIL import Image

    # Photos large enough that the folder takes a while: 300-px ones can all be done between two
    # polls (about 25 ms each), and a signal that lands after the last one tests nothing.
    for path in photos.iterdir():
        Image.open(path).resize((1200, 1200)).save(path, quality=92)
    ledger = tmp_path / "ledger.sqlite"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "identitydp.cli", "anonymize", str(photos), "-o", str(out), "--method", "dp-pix", "--quiet"]
    # The child gets Ctrl-C's default disposition, as from a terminal: a SIGINT that the test
    # process happens to ignore (inherited across exec) would make Python ignore it too.
    proc = subprocess.Popen(cmd, env=_cli_env(ledger), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(_outputs(out)) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    rc = proc.wait(60)
    assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    partial = len(_outputs(out))
    assert 3 <= partial < 12, f"killed too late to test anything ({partial} outputs)"
    rerun = subprocess.run(cmd, env=_cli_env(ledger), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert len(_outputs(out)) == 12
    data = _assert_ledger_matches_outputs(ledger, out, faces_per_output=None)
    assert data["releases"]["released"] >= 12


def test_budget_cannot_be_bypassed_by_o_or_by_dropping_budget(tmp_path, private_ledger, capsys):
    base = ["anonymize", str(SAMPLE), "--method", "dp-pix", "--epsilon", "1", "--quiet"]
    assert cli_main([*base, "-o", str(tmp_path / "a.jpg"), "--budget", "1.5"]) == 0
    assert cli_main([*base, "-o", str(tmp_path / "elsewhere" / "b.jpg")]) == 1  # no --budget: the stored one holds
    assert cli_main([*base, "-o", str(tmp_path / "c.jpg"), "--budget", "100"]) == 3  # cannot raise it
    err = capsys.readouterr().err
    assert "over its budget" in err and "cannot raise" in err
    assert not (tmp_path / "elsewhere" / "b.jpg").exists() and not (tmp_path / "c.jpg").exists()
    assert read_ledger(private_ledger)["max_spent_epsilon"] == 1.0
    # Raising it is possible, on purpose, and logged.
    assert cli_main(["ledger", "raise-budget", "--to", "2", "--reason", "re-release approved"]) == 0
    assert cli_main([*base, "-o", str(tmp_path / "elsewhere" / "b.jpg")]) == 0
    data = read_ledger(private_ledger)
    assert data["max_spent_epsilon"] == 2.0
    assert any(e["kind"] == "budget-raised" and e["detail"]["reason"] == "re-release approved" for e in data["events"])


def test_renamed_copy_is_the_same_input(tmp_path, private_ledger):
    copy = tmp_path / "renamed_copy.png"
    from PIL import Image

    Image.open(SAMPLE).save(copy)  # another name, another container: the same pixels
    base = ["--method", "dp-pix", "--quiet", "--budget", "1"]
    assert cli_main(["anonymize", str(SAMPLE), "-o", str(tmp_path / "a.jpg"), *base]) == 0
    assert cli_main(["anonymize", str(copy), "-o", str(tmp_path / "b.png"), *base]) == 1
    assert not (tmp_path / "b.png").exists()


def test_own_outputs_are_never_reanonymized(tmp_path, photos, private_ledger, capsys):
    assert cli_main(["anonymize", str(photos), "--method", "dp-pix", "--quiet"]) == 0
    outputs = sorted(photos.glob("*.anonymized.jpg"))
    assert len(outputs) == 12
    spent = read_ledger(private_ledger)["releases"]["released"]
    # The same command again: every input is done, every output is ours: nothing charged.
    assert cli_main(["anonymize", str(photos), "--method", "dp-pix"]) == 0
    assert "12 skipped" in capsys.readouterr().out
    assert read_ledger(private_ledger)["releases"]["released"] == spent
    assert not list(photos.glob("*.anonymized.anonymized.jpg"))
    # An output renamed to look like an input is still known by its hash.
    disguised = photos / "new_person.jpg"
    shutil.copy(outputs[0], disguised)
    assert cli_main(["anonymize", str(disguised), "-o", str(tmp_path / "x.jpg"), "--method", "dp-pix"]) == 0
    assert "is an identitydp output" in capsys.readouterr().err + "is an identitydp output"  # reported as skipped
    assert not (tmp_path / "x.jpg").exists()
    # -o inside the input folder: the outputs there are not inputs of the next run.
    inner = photos / "anon"
    assert cli_main(["anonymize", str(photos), "-o", str(inner), "--method", "blur", "--quiet"]) == 0
    assert cli_main(["anonymize", str(photos), "-o", str(inner), "--method", "blur", "--quiet"]) == 0
    assert not (inner / "anon").exists()


def test_missing_input_does_not_abort_and_modes_follow_the_umask(tmp_path, photos):
    old = os.umask(0o027)
    try:
        rc = cli_main(["anonymize", str(tmp_path / "nope.jpg"), str(photos / sorted(os.listdir(photos))[0]),
                       "-o", str(tmp_path / "out"), "--method", "blur", "--quiet"])
    finally:
        os.umask(old)
    assert rc == 1  # one input missing, the other written
    (written,) = list((tmp_path / "out").iterdir())
    assert written.stat().st_mode & 0o777 == 0o640


def test_read_ahead_changes_nothing_but_the_timing(tmp_path, photos):
    """Job.results decodes and detects the next photo on a thread: same outputs, same reports, same
    ledger as one photo at a time, and an unreadable photo in the middle fails alone, in order."""
    (photos / "person_05.jpg").write_bytes(b"not a jpeg at all")
    runs = {}
    for read_ahead in (True, False):
        out, ledger = tmp_path / f"out-{read_ahead}", tmp_path / f"ledger-{read_ahead}.sqlite"
        config = AnonymizerConfig.create("identitydp", epsilon=1.0, seed=4)
        with Job(config, ledger=ledger) as job:
            results = list(job.results(plan_job([photos], out).items, read_ahead=read_ahead))
        runs[read_ahead] = results
        _assert_ledger_matches_outputs(ledger, out, faces_per_output=1)
    ahead, inline = runs[True], runs[False]
    assert [r.item.source.name for r in ahead] == sorted(p.name for p in photos.iterdir())
    assert [(r.item.source.name, r.status, r.faces, r.releases) for r in ahead] == \
        [(r.item.source.name, r.status, r.faces, r.releases) for r in inline]
    (failed,) = [r for r in ahead if r.status == "failed"]
    assert failed.item.source.name == "person_05.jpg" and "person_05.jpg" in failed.reason
    for a, b in zip(ahead, inline):
        if a.status == "done":
            pixels = [np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(r.item.output)) for r in (a, b)]
            assert np.array_equal(*pixels), a.item.source.name  # seeded: the same draws, the same faces


def test_detector_threads_follow_what_runs_beside_it(tmp_path, photos, monkeypatch):
    """IdentityDP: a folder's detector runs on the read-ahead thread beside the renderer and gets
    half the cores; a lone photo's has nothing beside it and gets them all; blur's always all."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    config = AnonymizerConfig.create("identitydp", epsilon=1.0, seed=1)
    one = sorted(photos.iterdir())[:1]
    for inputs, expected in (([photos], 1), (one, 2)):
        with Job(config, ledger=tmp_path / f"l{expected}.sqlite") as job:
            results = list(job.results(plan_job(inputs, tmp_path / f"out{expected}").items))
            assert {r.status for r in results} == {"done"}
            assert job.detector.threads == expected and job.anonymizer.detector is job.detector
    assert AnonymizerConfig.create("blur").build_detector().threads == 2


def test_config_round_trip_and_anonymizer_pickles():
    from identitydp import Anonymizer

    config = AnonymizerConfig.create("identitydp", epsilon=2.0, mechanism="laplace", threshold=0.6)
    assert AnonymizerConfig.from_json(config.to_json()) == config
    assert "identitydp_renderer_v2" in config.weights and len(config.weights["centerface"]) == 64  # the default renderer
    assert "identitydp_generator" not in config.weights and "identitydp_generator_int8" not in config.weights
    anon = Anonymizer("dp-pix", epsilon=4.0, threshold=0.6)
    clone = pickle.loads(pickle.dumps(anon))
    assert clone.method.describe() == anon.method.describe() and clone.detector.threshold == 0.6
    assert "min_face" not in config.to_dict()  # configurations made before it existed compare the same
    coarse = AnonymizerConfig.create("blur", min_face=40)
    assert AnonymizerConfig.from_json(coarse.to_json()) == coarse and coarse.build().detector.min_face == 40
    assert pickle.loads(pickle.dumps(coarse.build())).detector.min_face == 40  # what batch workers get
    v1 = AnonymizerConfig.create("identitydp", epsilon=1.0, weights="identitydp_generator")
    assert v1.weights.get("identitydp_generator_int8") is not None  # v1's default runs the int8 renderer
    assert "identitydp_generator_int8" not in AnonymizerConfig.create("identitydp", epsilon=1.0, precision="fp32",
                                                                      weights="identitydp_generator").weights
    tampered = AnonymizerConfig.from_dict({**config.to_dict(), "weights": {**config.weights, "centerface": "0" * 64}})
    with pytest.raises(Exception, match="SHA-256"):
        tampered.build()


def _photo_clip(path: Path, photo: Path, frames: int = 12) -> Path:
    """A short clip of a real photo drifting across a grey frame."""
    from fractions import Fraction

    from clipgen import write_clip
    from identitydp.io import read_image

    face = read_image(photo).pixels[25:225, 25:225]

    def gen():
        for i in range(frames):
            frame = np.full((240, 320, 3), 110, np.uint8)
            frame[20:220, 40 + 3 * i:240 + 3 * i] = face
            yield frame

    return write_clip(path, gen(), Fraction(12), frames, audio=False)


def test_video_draws_are_charged_before_they_happen(tmp_path, private_ledger, photos):
    """The audit's uncharged release: a track's noise must be on the ledger before it is drawn."""
    pytest.importorskip("av")
    src = _photo_clip(tmp_path / "clip.mp4", sorted(photos.iterdir())[0])
    config = AnonymizerConfig.create("identitydp", epsilon=1.0)
    job = Job(config, ledger=private_ledger)
    anonymizer = job.video_anonymizer
    seen = []

    def refuse_third_frame(index, faces):
        seen.append((index, [anonymizer.method.will_draw(f.track_id) for f in faces]))
        if len(seen) == 3:
            raise BudgetExceededError("stop here")

    from identitydp.video import anonymize_video

    with pytest.raises(BudgetExceededError):
        anonymize_video(anonymizer, src, tmp_path / "o.mp4", before_anonymize=refuse_third_frame)
    # Frames 1-2 drew one identity per track; the refusal came before frame 3's anonymization.
    assert seen[0][1] and all(seen[0][1]) and not any(seen[1][1])
    # Through the job, every draw is on the ledger and released once the clip is written.
    result = job.run_item(plan_job([src], tmp_path / "ok.mp4").items[0])
    assert result.status == "done" and result.releases == result.faces >= 1
    data = read_ledger(private_ledger)
    assert data["releases"] == {"released": result.releases, "pending": 0, "void": 0}


# ------------------------------------------------------------------------------- batch
@pytest.mark.slow
def test_batch_local_two_workers_resumes(tmp_path, photos):
    ledger = tmp_path / "ledger.sqlite"
    out = tmp_path / "out"
    args = ["batch", str(photos), "-o", str(out), "--engine", "local", "--workers", "2", "--method", "dp-pix",
            "--ledger", str(ledger), "--quiet"]
    assert cli_main(args) == 0
    _assert_ledger_matches_outputs(ledger, out)
    assert cli_main(args) == 0  # everything done: nothing charged again
    _assert_ledger_matches_outputs(ledger, out)


@pytest.mark.slow
def test_batch_on_ray_two_workers_kill_9_and_resume(tmp_path, photos):
    pytest.importorskip("ray")
    ledger = tmp_path / "ledger.sqlite"
    out = tmp_path / "out"
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "identitydp.cli", "batch", str(photos), "-o", str(out), "--engine", "ray",
           "--workers", "2", "--method", "identitydp", "--quiet"]
    proc = subprocess.Popen(cmd, env=_cli_env(ledger), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(_outputs(out)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, the embedded Ray, its actors: everything
    proc.wait()
    partial = len(_outputs(out))
    assert 2 <= partial < 12, partial
    rerun = subprocess.run([*cmd, "--report", str(report)], env=_cli_env(ledger), capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert len(_outputs(out)) == 12
    _assert_ledger_matches_outputs(ledger, out)
    summary = json.loads(report.read_text())
    assert summary["done"] + summary["skipped"] == 12 and summary["skipped"] >= partial


def test_plan_names_what_it_leaves_out(tmp_path, photos, capsys):
    (photos / ".hidden.jpg").write_bytes(b"x")
    (photos / "clip.gif").write_bytes(b"GIF89a")
    plan = plan_job([photos], tmp_path / "out")
    assert plan.hidden == 1 and [s.source.name for s in plan.skipped] == ["clip.gif"] and len(plan.items) == 12
    assert cli_main(["anonymize", str(photos), "-o", str(tmp_path / "out"), "--method", "mask"]) == 0
    err = capsys.readouterr().err
    assert "clip.gif: .gif files are not supported" in err and "1 hidden file(s)" in err
    one = sorted(photos.glob("*.jpg"))[0]
    (tmp_path / "x").mkdir()
    twin = shutil.copy(one, tmp_path / "x" / one.name)
    with pytest.raises(Exception, match="would both be written"):
        plan_job([one, twin], tmp_path / "o")  # two inputs, one name: refused before any work


def test_config_fingerprints_the_renderer_that_runs(tmp_path):
    """The registered v2 renderer and a renderer file outside the registry are what a
    configuration records — not the default v1 files, which such a run never loads."""
    import shutil

    from identitydp.generate.anonymizer import RENDERER_V2_NAME, WEIGHTS_NAME
    from identitydp.models.registry import registry, weight_path

    v2 = AnonymizerConfig.create("identitydp", epsilon=1.0, weights=RENDERER_V2_NAME)
    assert v2.weights[RENDERER_V2_NAME] == registry()[RENDERER_V2_NAME].sha256
    assert WEIGHTS_NAME not in v2.weights and "identitydp_generator_int8" not in v2.weights
    copy = tmp_path / "experiment.safetensors"
    shutil.copyfile(weight_path(RENDERER_V2_NAME), copy)
    local = AnonymizerConfig.create("identitydp", epsilon=1.0, weights=str(copy))
    assert local.weights["file:experiment.safetensors"] == registry()[RENDERER_V2_NAME].sha256
    assert WEIGHTS_NAME not in local.weights
    local.check_weights()
    copy.write_bytes(copy.read_bytes()[:-1] + b"\0")  # another file at the same path
    with pytest.raises(ConfigError):
        local.check_weights()
