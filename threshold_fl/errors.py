"""The one exception hierarchy of threshold-fl.

Every error the library raises on purpose derives from :class:`ThresholdFLError`,
so an application can catch that one class.  Each message says what went wrong
and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ThresholdFLError",
    "EnvironmentError_",
    "ParameterError",
    "CryptoError",
    "KeyMismatchError",
    "InsufficientSharesError",
    "FrameError",
    "IdentityError",
    "AuthenticationError",
    "ModelLayoutError",
]


class ThresholdFLError(Exception):
    """Root of every error raised by threshold-fl."""


class EnvironmentError_(ThresholdFLError):
    """The runtime cannot host threshold-fl (wrong Python, missing OpenFHE)."""


class ParameterError(ThresholdFLError, ValueError):
    """A parameter or argument is invalid; nothing was done."""


class CryptoError(ThresholdFLError):
    """A homomorphic-encryption operation could not be carried out."""


class KeyMismatchError(CryptoError):
    """Objects made under different keys or parameter sets were combined."""


class InsufficientSharesError(CryptoError):
    """Too few secret-key shares to recover a key (fewer than the threshold t)."""


class FrameError(ThresholdFLError):
    """Bytes received do not form a valid, untampered frame of the expected kind."""


class IdentityError(ThresholdFLError):
    """An identity key file is missing, malformed or unsafe."""


class AuthenticationError(ThresholdFLError):
    """A signature or an authenticated ciphertext did not verify."""


class ModelLayoutError(ThresholdFLError, ValueError):
    """A flat vector or a model does not match the layout it is restored into."""
