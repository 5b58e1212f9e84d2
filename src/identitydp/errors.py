"""Exceptions raised by identitydp. The CLI maps them to messages and exit codes."""


class IdentityDPError(Exception):
    """Base class of every error identitydp raises on purpose."""


class ImageReadError(IdentityDPError):
    """An input image could not be read or decoded (the message names the file)."""


class ImageWriteError(IdentityDPError):
    """An output could not be written (would overwrite an input, bad folder, encoder error)."""


class WeightsError(IdentityDPError):
    """A weight file is missing, unknown or fails its checksum."""


class PrivacyError(IdentityDPError):
    """Invalid privacy parameters, or a release that would exceed the budget."""


class BudgetExceededError(PrivacyError):
    """A release would spend more than the declared privacy budget for one input."""


class AnonymizationError(IdentityDPError):
    """A face could not be anonymized (the pipeline then masks it: fail closed)."""
