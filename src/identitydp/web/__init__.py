"""The local web UI (`identitydp serve`), on the job layer. See :func:`create_app`."""

from .app import WebError, create_app, epsilon_meaning

__all__ = ["WebError", "create_app", "epsilon_meaning"]
