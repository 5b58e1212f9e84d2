"""The evaluation suite: privacy, utility, realism, diversity and speed of anonymizers on LFW.

Protocol: docs/evaluation.md#protocol. Entry points: ``identitydp eval`` (:mod:`identitydp.eval._cli`),
:class:`~identitydp.eval.runner.EvalRun` and :func:`~identitydp.eval.report.write_report`.
Heavy modules (torch, models) are imported lazily by the runner.
"""

from .config import EvalConfig, EvalConfigError, Setting, expand_methods, parse_method_spec

__all__ = ["EvalConfig", "EvalConfigError", "Setting", "expand_methods", "parse_method_spec", "run_eval", "write_report"]


def run_eval(config: EvalConfig, out_dir, cache_dir="cache/eval", force: bool = False, progress: bool = True, echo=None,
             threads: int | None = 1) -> dict:
    """Run (or resume / extend) an evaluation in ``out_dir`` and regenerate its report.

    Returns:
        setting key -> status (``done``, ``skipped (complete)``, ``unavailable: …``).
    """
    from .report import write_report
    from .runner import EvalRun

    run = EvalRun(config, out_dir, cache_dir=cache_dir, force=force, progress=progress, echo=echo, threads=threads)
    status = run.run()
    write_report(out_dir)
    return status


def write_report(run_dir):
    """Regenerate report.md, frontier.png and samples.png of a run folder from its results.jsonl."""
    from .report import write_report as _write

    return _write(run_dir)
