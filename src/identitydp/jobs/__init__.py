"""The job layer that every front end (CLI, web UI, batch runners) goes through.

A job plans its outputs (:func:`plan_job`), anonymizes each item with one
:class:`AnonymizerConfig`, charges the durable ledger (:class:`~identitydp.privacy.store.LedgerStore`)
before every noise draw, writes atomically with the user's file mode, and reports per item
(:class:`ItemResult`, :class:`JobSummary`). ``identitydp.jobs.batch`` runs the same items on
several processes or on Ray.

Example::

    from identitydp.jobs import AnonymizerConfig, Job, plan_job

    plan = plan_job(["photos/"], "out/")
    config = AnonymizerConfig.create("identitydp", epsilon=1.0)
    with Job(config, ledger="ledger.sqlite", budget=4.0) as job:
        summary = job.run(plan.items)
    print(summary.to_dict()["done"], "written")
"""

from .config import DP_METHODS, GENDER_FROM_CONTEXT_MAX_EPSILON, PRODUCT_SHARPEN, AnonymizerConfig, ConfigError, with_product_defaults
from .job import ItemResult, Job, JobSummary, VideoOptions, file_digest, pixel_digest
from .plan import JobPlan, PlanError, Skipped, WorkItem, plan_job, read_manifest

__all__ = [
    "AnonymizerConfig",
    "ConfigError",
    "DP_METHODS",
    "GENDER_FROM_CONTEXT_MAX_EPSILON",
    "PRODUCT_SHARPEN",
    "ItemResult",
    "Job",
    "JobPlan",
    "JobSummary",
    "PlanError",
    "Skipped",
    "VideoOptions",
    "WorkItem",
    "file_digest",
    "pixel_digest",
    "plan_job",
    "read_manifest",
    "with_product_defaults",
]
