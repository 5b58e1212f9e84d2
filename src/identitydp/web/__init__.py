"""The local web UI (`identitydp serve`), on the job layer. See :func:`create_app`."""

from .app import EPSILON_MEANING, WebError, create_app

__all__ = ["EPSILON_MEANING", "WebError", "create_app"]
