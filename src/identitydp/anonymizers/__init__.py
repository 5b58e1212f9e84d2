"""Face anonymizers: classical baselines and the shared interface."""
