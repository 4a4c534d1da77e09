"""The one exception hierarchy of threshold-fl.

Every error the library raises on purpose derives from :class:`ThresholdFLError`,
so an application can catch that one class.  Each message says what went wrong
and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ManifestError",
    "ProtocolError",
    "MessageRejected",
    "MalformedMessage",
    "ForgedMessage",
    "StaleMessage",
    "DuplicateMessage",
    "UnexpectedMessage",
    "SessionAborted",
    "ManifestMismatch",
    "ThresholdFLError",
    "EnvironmentError_",
    "ParameterError",
    "CryptoError",
    "KeyMismatchError",
    "FrameError",
    "IdentityError",
    "AuthenticationError",
    "ModelLayoutError",
    "TransportError",
    "TransportClosed",
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


class FrameError(ThresholdFLError):
    """Bytes received do not form a valid, untampered frame of the expected kind."""


class IdentityError(ThresholdFLError):
    """An identity key file is missing, malformed or unsafe."""


class AuthenticationError(ThresholdFLError):
    """A signature or an authenticated ciphertext did not verify."""


class ModelLayoutError(ThresholdFLError, ValueError):
    """A flat vector or a model does not match the layout it is restored into."""


class TransportError(ThresholdFLError):
    """Moving bytes between parties failed; the message says whether retrying helps."""


class TransportClosed(TransportError):
    """The transport was closed (or its party disconnected); no retry on it will help."""


class ManifestError(ParameterError):
    """A federation manifest is malformed, inconsistent or does not match this party."""


class ProtocolError(ThresholdFLError):
    """The federated protocol could not accept a message or cannot go on."""


class MessageRejected(ProtocolError):
    """A received message was rejected; the receiver's state is unchanged.

    Rejections are normal on an untrusted network (duplicates, late messages):
    drivers log them and carry on.  ``sender`` is the authenticated sender, when the
    message got that far (drivers name it in logs and blame).
    """

    sender: str | None = None


class MalformedMessage(MessageRejected, FrameError):
    """The bytes do not form a valid message of this protocol version."""


class ForgedMessage(MessageRejected, AuthenticationError):
    """The message is not authentic: unknown sender, bad signature or wrong role."""


class StaleMessage(MessageRejected):
    """The message belongs to another session, or an earlier (or later) step: a replay."""


class DuplicateMessage(MessageRejected):
    """The same party already sent this message for this step."""


class UnexpectedMessage(MessageRejected):
    """The message is authentic and current but not acceptable in the receiver's state."""


class SessionAborted(ProtocolError):
    """The session ended without completing; the message says why."""


class ManifestMismatch(SessionAborted):
    """A peer runs a different manifest (its fingerprint differs from this party's):
    every party must run the same manifest file, so the session cannot go on with it."""
