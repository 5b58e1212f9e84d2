"""Layering: the product never imports its training code or its evaluation.

Checked in a fresh interpreter (the test process has imported everything), through the job layer
every front end uses, with both renderers: a stray import on the anonymization path fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("weights", ["", "identitydp_renderer_v2"])
def test_anonymizing_through_the_job_layer_imports_no_training_or_evaluation_code(weights):
    code = ("import sys; from identitydp.io import read_image; from identitydp.jobs import AnonymizerConfig; "
            f"params = {{'epsilon': 1.0, 'weights': {weights!r}}} if {weights!r} else {{'epsilon': 1.0}}; "
            "anonymizer = AnonymizerConfig.create('identitydp', **params).build(); "
            "out, report = anonymizer.anonymize(read_image('samples/group.jpg').pixels); "
            "bad = sorted(m for m in sys.modules if m.startswith(('identitydp.training', 'identitydp.eval'))); "
            "print('FACES', report.num_faces, 'MODULES', ','.join(bad) or '-')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-4:] == ["FACES", "5", "MODULES", "-"], out.stdout[-2000:] + out.stderr[-2000:]


def test_the_cli_loads_only_the_option_modules_of_train_and_eval(tmp_path):
    # `identitydp --help` lists `train` and `eval`, so their argument definitions are imported;
    # nothing else of them may be (no trainer, no measurement code) on an anonymization.
    code = ("import sys; from identitydp.cli import main; "
            f"rc = main(['--threads', '1', 'anonymize', 'samples/group.jpg', '-o', {str(tmp_path / 'out.jpg')!r}]); "
            "bad = sorted(m for m in sys.modules if m.startswith(('identitydp.training', 'identitydp.eval'))); "
            "print('MODULES', ','.join(bad), rc)")
    env = {**os.environ, "IDENTITYDP_LEDGER": str(tmp_path / "ledger.sqlite")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    modules = out.stdout.split()[-2].split(",")
    assert set(modules) <= {"identitydp.eval", "identitydp.eval._cli", "identitydp.eval.config",
                            "identitydp.training", "identitydp.training.options"}, out.stdout[-2000:]
