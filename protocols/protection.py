"""How each mode carries vectors: CKKS frames (threshold, single-key) or float32 bytes.

One interface for all three modes keeps the message flow identical, so the modes can
be compared like for like: a plaintext-mode "protected" part is simply float32 bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

from protocols.manifest import Mode
from protocols.messages import MAX_UPLOAD_PARTS, SensitivityUpload, UpdateUpload
from threshold_fl.arrays import FloatArray, U64Array
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.keys import PublicKey
from threshold_fl.crypto.ring import build
from threshold_fl.crypto.vectors import (
    EncryptedSum,
    EncryptedVector,
    ciphertext_count,
    encrypt_chunks,
)
from threshold_fl.crypto.wire import (
    decode_vector,
    encode_vector,
    encode_vector_part,
    stream_vector,
)
from threshold_fl.errors import DuplicateMessage, MalformedMessage, ParameterError
from threshold_fl.identity import PartyId

__all__ = [
    "DEFAULT_PART_BYTES",
    "PLAIN_DTYPE",
    "UploadPart",
    "FloatArray",
    "ProtectedSum",
    "UploadRound",
    "check_bound",
    "checked_vector",
    "check_part_bytes",
    "checked_weights",
    "decode_frames",
    "decode_plain",
    "decryption_parts",
    "encode_frames",
    "encode_plain",
    "implausible",
    "most_parts",
    "open_protected",
    "part_span",
    "require_decryption_room",
    "require_part_room",
    "upload_parts",
]

#: Coordinates sent in the clear travel as float32: the precision of the models trained.
PLAIN_DTYPE = np.dtype("<f4")
_MAX_FRAMES = 1_000_000
#: Most bytes of one upload message by default: an upload larger than this streams as
#: several parts, well under the transport's max_payload (1 GiB by default), so that no
#: party holds a whole large upload as one message.
DEFAULT_PART_BYTES = 256 * 2**20
_FRAME_OVERHEAD = 1024  # a ciphertext's serialisation header, frame and msgpack bytes
_MESSAGE_OVERHEAD = 4096  # an upload message's envelope, header, signature and msgpack


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


def part_span(total: int, parts: int, part: int) -> tuple[int, int]:
    """Items ``start`` to ``stop - 1`` of ``total`` (ciphertexts, or values) that part
    ``part`` of ``parts`` carries: an even split both ends compute alike, so a part needs
    no offsets of its own and a part that carries other items is refused."""
    return part * total // parts, (part + 1) * total // parts


@dataclass(frozen=True)
class UploadPart:
    """One message's worth of an upload: protected frames and float32 plain bytes
    (None in mask agreement), part ``part`` of ``parts``."""

    protected: tuple[bytes, ...]
    plain: bytes | None
    part: int
    parts: int

    def body(self) -> SensitivityUpload | UpdateUpload:
        """The message body carrying this part (float32 parts are weighted on arrival)."""
        if self.plain is None:
            return SensitivityUpload(self.protected, self.part, self.parts)
        return UpdateUpload(self.protected, self.plain, self.part, self.parts)


def _protected_items(mode: Mode, context: CkksContext, length: int) -> int:
    """What the protected part is split into: ciphertexts, or float32 values."""
    return length if mode is Mode.PLAINTEXT else ciphertext_count(context, length)


def most_parts(mode: Mode, context: CkksContext, length: int, plain_length: int) -> int:
    """The most parts an upload of *length* protected and *plain_length* plain values
    can come in: one protected item (ciphertext or value) and one plain value each."""
    return max(_protected_items(mode, context, length), plain_length, 1)


def _item_bytes(mode: Mode, context: CkksContext) -> int:
    """Most bytes one protected item (a ciphertext, or a float32 value) adds to a part."""
    if mode is Mode.PLAINTEXT:
        return PLAIN_DTYPE.itemsize
    limbs = len(context.aggregate_moduli)
    return 2 * context.params.resolved_ring_dimension * 8 * limbs + _FRAME_OVERHEAD


def require_part_room(mode: Mode, context: CkksContext, part_bytes: int) -> None:
    """Raise ParameterError unless *part_bytes* holds the smallest upload part: one
    protected item and one float32 value, besides the message's own bytes."""
    item = "float32 value" if mode is Mode.PLAINTEXT else "ciphertext"
    _require_room(part_bytes, _item_bytes(mode, context), f"an upload part carries at "
                  f"least one {item}")


def require_decryption_room(context: CkksContext, part_bytes: int) -> None:
    """Raise ParameterError unless *part_bytes* holds the smallest decryption part (what
    an aggregator's *part_bytes* sizes): one ciphertext's c1, share or fused polynomial
    and one float32 value, besides the message's own bytes."""
    _require_room(part_bytes, _decryption_item_bytes(context), "a decryption part "
                  "carries at least one ciphertext's polynomial")


def _require_room(part_bytes: int, item_bytes: int, carries: str) -> None:
    smallest = _MESSAGE_OVERHEAD + item_bytes + PLAIN_DTYPE.itemsize
    if isinstance(part_bytes, bool) or not isinstance(part_bytes, int) or (
            part_bytes < smallest):
        raise ParameterError(
            f"part_bytes {part_bytes!r} is too small: {carries} and the message's own "
            f"bytes, {smallest} bytes in all; make part_bytes at least {smallest}")


def check_part_bytes(part_bytes: int, max_payload: int) -> None:
    """Raise ParameterError unless upload parts of at most *part_bytes* fit the
    transport's *max_payload* (the largest message it sends or accepts)."""
    if part_bytes > max_payload:
        raise ParameterError(
            f"upload parts of up to {part_bytes} bytes would exceed the transport's "
            f"max_payload of {max_payload} bytes, and be refused; make part_bytes at most "
            "max_payload")


def _part_count(mode: Mode, context: CkksContext, length: int, plain_length: int,
                part_bytes: int) -> int:
    """The fewest parts, split evenly (:func:`part_span`), none of which is over
    *part_bytes*: a part carries at most ceil(items / parts) protected items and
    ceil(plain_length / parts) float32 values."""
    require_part_room(mode, context, part_bytes)
    items = _protected_items(mode, context, length)
    most = most_parts(mode, context, length, plain_length)  # 1 item, 1 value each
    return _fewest_parts(items, _item_bytes(mode, context), plain_length, part_bytes, most)


def _fewest_parts(items: int, per_item: int, plain_length: int, part_bytes: int,
                  most: int) -> int:
    """The fewest of 1 to *most* parts each of at most *part_bytes* (*most* if none)."""
    room = part_bytes - _MESSAGE_OVERHEAD

    def fits(parts: int) -> bool:
        return (-(-items // parts) * per_item
                + -(-plain_length // parts) * PLAIN_DTYPE.itemsize) <= room

    low, high = 1, most
    while low < high:  # the fewest parts that fit: fits() only grows with parts
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle + 1, high)
    if low > MAX_UPLOAD_PARTS:
        raise ParameterError(
            f"part_bytes {part_bytes} would split this message into {low} parts, more than "
            f"the {MAX_UPLOAD_PARTS} a receiver accepts; make part_bytes larger")
    return low


def decryption_parts(context: CkksContext, count: int, plain_length: int,
                     part_bytes: int) -> int:
    """How many parts a joint decryption of *count* ciphertexts streams in: the fewest
    whose c1 (or share, or fused polynomials with their share of the *plain_length*
    float32 values) fit *part_bytes*, and at least one ciphertext each (a larger plain
    part then makes the fused parts larger)."""
    return _fewest_parts(count, _decryption_item_bytes(context), plain_length, part_bytes,
                         max(count, 1))


def _decryption_item_bytes(context: CkksContext) -> int:
    """Most bytes one ciphertext's polynomial adds to a decryption part."""
    return context.params.resolved_ring_dimension * 8 * len(context.aggregate_moduli) + (
        _FRAME_OVERHEAD)


def upload_parts(
    mode: Mode, context: CkksContext, public_key: PublicKey | None, values: FloatArray,
    weight: float, plain: FloatArray | None, *, part_bytes: int = DEFAULT_PART_BYTES,
) -> Iterator[UploadPart]:
    """An upload as parts of at most ``part_bytes`` each (message bytes included), one
    part at a time (only the part being made is held beyond ``values``): ``weight *
    values`` encrypted (threshold, single-key), or ``values`` as float32 bytes
    (plaintext mode).

    Ciphertexts carry the client's FedAvg weight because the aggregator can only add
    them (see threshold_fl.crypto.vectors).  Float32 parts travel unweighted and the
    aggregator weights them in float64, which keeps plaintext FedAvg exact.
    """
    plain_length = 0 if plain is None else plain.size
    parts = _part_count(mode, context, values.size, plain_length, part_bytes)
    items = _protected_items(mode, context, values.size)
    if mode is not Mode.PLAINTEXT and public_key is None:
        raise ParameterError("no public key yet: key agreement has not finished")
    for part in range(parts):
        start, stop = part_span(items, parts, part)
        if mode is Mode.PLAINTEXT:
            protected: tuple[bytes, ...] = (encode_plain(values[start:stop]),)
        else:
            assert public_key is not None
            step = context.values_per_ciphertext
            chunk = values[start * step : stop * step]
            blobs = [build(ring) for ring in encrypt_chunks(context, public_key, chunk,
                                                             weight=weight)]
            protected = tuple(encode_vector_part(context, public_key.key_id, values.size,
                                                 blobs, first=start)) if blobs else ()
        low, high = part_span(plain_length, parts, part)
        plain_part = None if plain is None else encode_plain(plain[low:high])
        yield UploadPart(protected, plain_part, part, parts)


class ProtectedSum:
    """The aggregator's running sum of pre-weighted protected parts, for any mode.

    Each input, or each part of one, joins all at once or not at all (see
    EncryptedSum.add_part).
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

    @property
    def peak_staged(self) -> int:
        """Most ciphertexts (or values) held at once besides the running sum."""
        return self._encrypted.peak_staged if self._encrypted is not None else self._peak_plain

    _peak_plain = 0

    def add(self, weight: float, frames: Sequence[bytes], part: int = 0, parts: int = 1) -> None:
        """Add part ``part`` of ``parts`` of one upload: float32 parts times ``weight``;
        ciphertexts come pre-weighted."""
        start, stop = part_span(_protected_items(self._mode, self._context, self._length),
                                parts, part)
        if self._encrypted is None:
            assert self._plain is not None
            values = decode_plain(_single(frames), stop - start, "an upload's protected part")
            self._peak_plain = max(self._peak_plain, values.size)
            self._plain[start:stop] += weight * values
            return
        if not frames and start == stop:
            return  # a part with no ciphertexts (more parts than ciphertexts)
        chunks = stream_vector(self._context, frames, key_id=self._key_id, length=self._length,
                               span=(start, stop))
        self._encrypted.add_part(start, stop, chunks)

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
        return self._encrypted.ring_parts()

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
        self._parts: dict[PartyId, tuple[int, set[int]]] = {}  # party: (parts, received)
        self._most_parts = most_parts(mode, context, length, self.plain.size)
        self.peak_staged = 0  # the sum's, once taken: most ciphertexts held besides it

    def weight(self, party: PartyId) -> float:
        return self._raw[party] / sum(self._raw[other] for other in self.expected)

    def add(self, party: PartyId, upload: SensitivityUpload | UpdateUpload) -> bool:
        """Add *party*'s upload part, all or nothing, with its weight: its ciphertexts
        carry it already, float32 parts do not (a SensitivityUpload has none).  True once
        the party's last part is in.

        Parts may come in any order; a repeated part, one that disagrees with the
        party's earlier parts on how many there are, or one that says there are more
        than an upload of this size can have (:func:`most_parts`), is refused and changes
        nothing.
        """
        protected, part, parts = upload.protected, upload.part, upload.parts
        plain = upload.plain if isinstance(upload, UpdateUpload) else None
        if parts > self._most_parts:
            raise MalformedMessage(
                f"upload part {part} from {party!r} says the upload has {parts} parts, more "
                f"than the {self._most_parts} an upload of this size can have (one "
                "ciphertext or value each); discarded")
        parts_seen = self._parts.get(party)
        if parts_seen is not None and parts_seen[0] != parts:
            raise MalformedMessage(
                f"upload part {part} from {party!r} says the upload has {parts} parts, its "
                f"earlier parts said {parts_seen[0]}; discarded")
        if parts_seen is not None and part in parts_seen[1]:
            raise DuplicateMessage(
                f"upload part {part} of {parts} from {party!r} arrived again (replayed or "
                "resent); discarded")
        low, high = part_span(self.plain.size, parts, part)
        values = np.zeros(0) if plain is None else decode_plain(
            plain, high - low, f"the plain part of upload part {part} of {parts}")
        weight = self.weight(party)
        assert self.protected is not None, "the sum was already taken"
        self.protected.add(weight, protected, part, parts)
        self.plain[low:high] += weight * values
        received = self._parts.setdefault(party, (parts, set()))[1]
        received.add(part)
        if len(received) < parts:
            return False
        self.uploaders.append(party)
        return True

    def missing(self) -> list[PartyId]:
        """Expected clients that have not uploaded."""
        return [party for party in self.expected if party not in self.uploaders]

    def progress(self, party: PartyId) -> str:
        """How far *party*'s upload in parts got: "3/8" parts in, or "" (none yet)."""
        seen = self._parts.get(party)
        return "" if seen is None else f"{len(seen[1])}/{seen[0]}"

    def parts_note(self, missing: Sequence[PartyId]) -> str:
        """For a waiting line: " (upload parts in: 'client1' 3/8)", for those of
        *missing* whose upload is under way; "" if none is."""
        notes = [f"{party!r} {self.progress(party)}" for party in missing if party in self._parts]
        return f" (upload parts in: {', '.join(notes)})" if notes else ""

    def take(self) -> ProtectedSum:
        """The protected sum, released here (the plain sum stays for the broadcasts)."""
        protected, self.protected = self.protected, None
        assert protected is not None, "the sum was already taken"
        self.peak_staged = protected.peak_staged
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
