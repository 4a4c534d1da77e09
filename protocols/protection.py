"""How each mode carries vectors: CKKS frames (threshold, single-key) or float32 bytes.

One interface for all three modes keeps the message flow identical, so the modes can
be compared like for like: a plaintext-mode "protected" part is simply float32 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import msgpack
import numpy as np

from protocols.manifest import Mode
from threshold_fl.arrays import FloatArray, U64Array
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.keys import PublicKey
from threshold_fl.crypto.threshold import ring_parts
from threshold_fl.crypto.vectors import EncryptedSum, EncryptedVector, encrypt_vector
from threshold_fl.crypto.wire import decode_vector, encode_vector, stream_vector
from threshold_fl.errors import MalformedMessage, ParameterError
from threshold_fl.identity import PartyId

__all__ = [
    "PLAIN_DTYPE",
    "FloatArray",
    "ProtectedSum",
    "UploadRound",
    "check_bound",
    "checked_vector",
    "checked_weights",
    "decode_frames",
    "decode_plain",
    "encode_frames",
    "encode_plain",
    "implausible",
    "open_protected",
    "protect",
]

#: Coordinates sent in the clear travel as float32: the precision of the models trained.
PLAIN_DTYPE = np.dtype("<f4")
_MAX_FRAMES = 1_000_000


def encode_plain(values: FloatArray) -> bytes:
    return np.asarray(values, dtype=PLAIN_DTYPE).tobytes()


def decode_plain(data: bytes, length: int, what: str) -> FloatArray:
    """float32 bytes -> float64 vector of exactly ``length`` finite values."""
    if len(data) != length * PLAIN_DTYPE.itemsize:
        raise MalformedMessage(
            f"{what} has {len(data)} bytes, expected {length * PLAIN_DTYPE.itemsize} "
            f"({length} float32 values); discarded"
        )
    values = np.frombuffer(data, dtype=PLAIN_DTYPE).astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise MalformedMessage(f"{what} holds NaN or infinite values; discarded")
    return values


def protect(
    mode: Mode, context: CkksContext, public_key: PublicKey | None, values: FloatArray,
    weight: float,
) -> tuple[bytes, ...]:
    """``weight * values`` encrypted (threshold, single-key), or ``values`` as float32.

    Ciphertexts carry the client's FedAvg weight because the aggregator can only add
    them (see threshold_fl.crypto.vectors).  Float32 parts travel unweighted and the
    aggregator weights them in float64, which keeps plaintext FedAvg exact.
    """
    if mode is Mode.PLAINTEXT:
        return (encode_plain(values),)
    if public_key is None:
        raise ParameterError("no public key yet: key agreement has not finished")
    vector = encrypt_vector(context, public_key, values, weight=weight)
    return tuple(encode_vector(context, vector))


def open_protected(
    mode: Mode, context: CkksContext, key_id: str, frames: Sequence[bytes], length: int
) -> EncryptedVector | FloatArray:
    """Decode an aggregate's protected part, checking its key and length."""
    if mode is Mode.PLAINTEXT:
        return decode_plain(_single(frames), length, "the aggregate's protected part")
    vector = decode_vector(context, list(frames))
    if vector.key_id != key_id or vector.length != length or not vector.aggregated:
        raise MalformedMessage(
            f"the aggregate is {vector.length} values under key {vector.key_id[:16]} "
            f"(aggregated={vector.aggregated}); expected an aggregate of {length} values under "
            f"{key_id[:16]}; discarded"
        )
    return vector


class ProtectedSum:
    """The aggregator's running sum of pre-weighted protected parts, for any mode.

    Each input joins all at once or not at all (see EncryptedSum.add_chunks).
    """

    def __init__(self, mode: Mode, context: CkksContext, key_id: str, length: int) -> None:
        self._mode = mode
        self._context = context
        self._key_id = key_id
        self._length = length
        self._plain = np.zeros(length) if mode is Mode.PLAINTEXT else None
        self._encrypted = (
            None if mode is Mode.PLAINTEXT else EncryptedSum(context, key_id, length)
        )

    def add(self, weight: float, frames: Sequence[bytes]) -> None:
        """Add one upload: float32 parts times ``weight``; ciphertexts come pre-weighted."""
        if self._encrypted is None:
            assert self._plain is not None
            values = decode_plain(_single(frames), self._length, "an upload's protected part")
            self._plain += weight * values
            return
        chunks = stream_vector(self._context, frames, key_id=self._key_id, length=self._length)
        self._encrypted.add_chunks(chunks)

    def result(self) -> tuple[tuple[bytes, ...], str]:
        """The aggregate's frames and the digest partial decryptions will refer to."""
        if self._encrypted is None:
            assert self._plain is not None
            frame = encode_plain(self._plain)
            return (frame,), hashlib.sha256(frame).hexdigest()
        vector = self._encrypted.result()
        return tuple(encode_vector(self._context, vector)), vector.digest

    def ring_parts(self) -> tuple[U64Array, U64Array]:
        """The encrypted aggregate's c0 and c1 parts, each (count, limbs, n): what blind
        fusion works on (threshold mode)."""
        if self._encrypted is None:
            raise ParameterError("a plaintext-mode sum has no ring parts")
        c0, c1, _ = ring_parts(self._context, self._encrypted.result())
        return c0, c1


class UploadRound:
    """One upload attempt at the aggregator: the clients expected to upload, each one's
    FedAvg weight normalised over them (from *raw* weights), who has uploaded, and the
    running sums of the protected part (:class:`ProtectedSum`) and the plain part."""

    def __init__(self, mode: Mode, context: CkksContext, key_id: str, length: int,
                 model_length: int, expected: Sequence[PartyId],
                 raw: Mapping[PartyId, float]) -> None:
        self.expected, self.uploaders = tuple(expected), list[PartyId]()
        self._raw = raw
        self.protected: ProtectedSum | None = ProtectedSum(mode, context, key_id, length)
        self.plain = np.zeros(model_length - length)

    def weight(self, party: PartyId) -> float:
        return self._raw[party] / sum(self._raw[other] for other in self.expected)

    def add(self, party: PartyId, protected: Sequence[bytes], plain: bytes | None) -> None:
        """Add *party*'s upload, all or nothing, with its weight: its ciphertexts carry it
        already, float32 parts do not (*plain*: None in mask agreement)."""
        values = np.zeros(0) if plain is None else decode_plain(
            plain, self.plain.size, "the upload's plain part")
        weight = self.weight(party)
        assert self.protected is not None, "the sum was already taken"
        self.protected.add(weight, protected)
        self.plain += weight * values
        self.uploaders.append(party)

    def missing(self) -> list[PartyId]:
        """Expected clients that have not uploaded."""
        return [party for party in self.expected if party not in self.uploaders]

    def take(self) -> ProtectedSum:
        """The protected sum, released here (the plain sum stays for the broadcasts)."""
        protected, self.protected = self.protected, None
        assert protected is not None, "the sum was already taken"
        return protected


def encode_frames(frames: Sequence[bytes]) -> bytes:
    """Several frames as one byte string (what gets sealed for a recipient)."""
    packed: bytes = msgpack.packb(list(frames), use_bin_type=True)
    return packed


def decode_frames(data: bytes, what: str) -> list[bytes]:
    try:
        frames = msgpack.unpackb(data, raw=False)
    except Exception:  # msgpack raises several unrelated types
        raise MalformedMessage(f"{what} does not parse; discarded") from None
    if (
        not isinstance(frames, list)
        or len(frames) > _MAX_FRAMES
        or not all(isinstance(frame, bytes) for frame in frames)
    ):
        raise MalformedMessage(f"{what} is not a list of frames; discarded")
    return frames


def _single(frames: Sequence[bytes]) -> bytes:
    if len(frames) != 1:
        raise MalformedMessage(f"a plaintext-mode vector is one frame, got {len(frames)}")
    return frames[0]


def checked_weights(
    clients: Sequence[PartyId], weights: Mapping[str, float] | None
) -> dict[PartyId, float] | None:
    """FedAvg weights given by the application: one positive finite weight per client."""
    if weights is None:
        return None
    if set(weights) != set(clients):
        raise ParameterError(
            f"weights must name exactly the clients {list(clients)}, got "
            f"{sorted(weights)}"
        )
    for party, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
            0 < weight < float("inf")
        ):
            raise ParameterError(f"the weight of {party!r} must be positive and finite")
    return {PartyId(party): float(weight) for party, weight in weights.items()}


def checked_vector(values: FloatArray, length: int, what: str) -> FloatArray:
    """The application's vector as float64, once it is flat, real, finite and ``length`` long."""
    array = np.asarray(values)
    if array.ndim != 1 or array.size != length:
        raise ParameterError(f"the {what} must be a flat vector of {length} values, got "
                             f"shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise ParameterError(f"the {what} must hold real numbers, got {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise ParameterError(f"the {what} holds NaN or infinite values")
    return array


def check_bound(values: FloatArray, bound: float) -> None:
    """Raise unless every value lies in [-bound, bound], the most a client may encrypt."""
    beyond = np.abs(values) > bound
    if beyond.any():
        index = int(np.argmax(beyond))
        raise ParameterError(
            f"the model update's value {values[index]!r} at index {index} exceeds the "
            f"manifest's value_bound {bound:g}; clip the update to [-{bound:g}, {bound:g}] "
            "or make the manifest with a larger value_bound")


def implausible(values: FloatArray, *, sensitivities: bool, value_bound: float,
                error: float) -> str | None:
    """None if a decrypted sum is plausible, else what is wrong with it: normalised
    sensitivities lie in [0, 1] and updates within the value bound, and so do their
    averages (the weights add up to 1), give or take the CKKS ``error``.  NaN fails both
    comparisons, so it is caught as well."""
    low, high = (0.0, 1.0) if sensitivities else (-value_bound, value_bound)
    low, high = low - error, high + error
    outside = ~((values >= low) & (values <= high))
    if not outside.any():
        return None
    index = int(np.argmax(outside))
    return (f"value {float(values[index])!r} at index {index} ({int(outside.sum())} of "
            f"{values.size} values) is outside [{low:.6g}, {high:.6g}]")
