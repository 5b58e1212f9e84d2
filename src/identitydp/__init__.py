"""identitydp: face anonymization with a tunable, provable identity guarantee.

Quick start::

    from identitydp import Anonymizer
    from identitydp.io import read_image
    image = read_image("group.jpg")
    out, report = Anonymizer(method="blur").anonymize(image.pixels)
"""

__version__ = "0.1.0"

from .errors import IdentityDPError  # noqa: E402


def __getattr__(name: str):
    # Lazy so that `import identitydp.privacy` does not pull in OpenCV and torch.
    if name == "Anonymizer":
        from .pipeline import Anonymizer

        return Anonymizer
    raise AttributeError(name)


__all__ = ["Anonymizer", "IdentityDPError", "__version__"]
