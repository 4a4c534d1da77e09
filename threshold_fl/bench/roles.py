"""The roles of one federated round, each run in its own OS process by
:mod:`threshold_fl.bench.runner`, so that each role's seconds and peak memory
(``VmHWM`` of that process) are its own.

The parent (:func:`threshold_fl.bench.runner.write_keys`) leaves the joint key, the
members' threshold keys and the decryption set's keys on files; then, one process at a
time, the protocol's round with blind fusion:

- **client** (``encrypt``): draws its values chunk by chunk from a seeded
  generator (uniform in [-0.1, 0.1]), encrypts them a few ciphertexts at a time
  and writes the upload frames to a file: the vector is never held whole;
- **aggregator** (``aggregate``): streams every upload file into the running sum,
  so it holds one running aggregate and one staged input, whatever N is; then cuts
  the aggregate into c0 (kept) and c1, framed for the members of the set (its
  "split" seconds);
- **member** (``share``): each of the t members of the decryption set streams the c1
  frames and writes its masked decryption shares;
- **aggregator** (``fuse``): adds c0 and the t shares group by group (blind fusion)
  and writes the fused frames every client downloads;
- **client** (``decode``): streams the fused frames, removes the pad, decodes, and
  checks the result against the weighted average recomputed from the same seeds
  (one client's process: every client does the same).

The plaintext round (``plain``: float32 serialisation and the same streamed weighted
sum) runs in one process; ``baseline`` only imports this module (NumPy, OpenFHE, the
crypto layer): the memory every role starts from.

Vectors longer than the library's largest vector (MAX_VECTOR_LENGTH) travel as
consecutive segments, each its own vector.  Files hold length-prefixed records:
upload files one frame per record, c1, c0, share and fused files one run of frames
(c0: raw arrays) per group of ciphertexts.  A role's seconds leave out file I/O (a network would
replace the files) and drawing the test values; they include serialisation.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from threshold_fl.arrays import FloatArray
from threshold_fl.bench.output import peak_mib
from threshold_fl.crypto import (
    MAX_VECTOR_LENGTH,
    CkksContext,
    CkksParams,
    EncryptedSum,
    EncryptedVector,
    JointPublicKey,
    PublicKey,
    ciphertext_count,
    context_for,
    encrypt_chunks,
)
from threshold_fl.crypto.frames import FrameKind, encode_frame
from threshold_fl.crypto.ring import RingBlob, build
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.crypto.shares import decode_sums
from threshold_fl.crypto.threshold import (
    DecryptionSet,
    ThresholdKey,
    blind_fusion,
    decryption_shares,
    ring_parts,
    threshold_kit,
    unpad,
)
from threshold_fl.crypto.wire import (
    PolynomialRole,
    decode_joint_public_key,
    decode_polynomials,
    encode_polynomials,
    stream_vector,
)
from threshold_fl.errors import ParameterError, ThresholdFLError

__all__ = ["GROUP_CIPHERTEXTS", "ROLES", "ROLES_MODULE", "Layout", "RoleFailed", "Upload",
           "layout_for", "main"]

Job = dict[str, Any]
T = TypeVar("T")

GROUP_CIPHERTEXTS = 8  # ciphertexts per upload frame and per c1, share and fused run
VALUE_RANGE = 0.1  # client values are uniform in [-VALUE_RANGE, VALUE_RANGE]
ROLES_MODULE = "threshold_fl.bench.roles"  # run as ``python -m``
_RECORD_LENGTH = struct.Struct(">Q")


class RoleFailed(ThresholdFLError):
    """A role's process failed; the message carries its last error line."""


@dataclass(frozen=True)
class Upload:
    """One client's upload: the seeded value stream it carries and its FedAvg weight."""

    source: int
    weight: float


@dataclass(frozen=True)
class Layout:
    """How a vector is cut: groups of ``chunk`` values in segments of MAX_VECTOR_LENGTH."""

    length: int
    chunk: int
    segments: tuple[tuple[int, int], ...]


def layout_for(length: int, values_per_ciphertext: int) -> Layout:
    """Segments of whole groups (the library encrypts MAX_VECTOR_LENGTH values at most)."""
    if length < 1:
        raise ParameterError(f"a round needs at least one value, got {length}")
    chunk = GROUP_CIPHERTEXTS * values_per_ciphertext
    if length <= MAX_VECTOR_LENGTH:
        return Layout(length, chunk, ((0, length),))
    pieces = math.ceil(length / MAX_VECTOR_LENGTH)
    size = math.ceil(math.ceil(length / pieces) / chunk) * chunk
    if size > MAX_VECTOR_LENGTH:  # rounding up to whole groups overshot the limit
        size -= chunk
    return Layout(length, chunk, tuple((start, min(start + size, length))
                                       for start in range(0, length, size)))


# -- the crypto calls of a round -------------------------------------------------------
def encrypt_upload(context: CkksContext, key: PublicKey, values: FloatArray,
                   weight: float) -> Iterator[RingBlob]:
    """One client's ciphertexts: ``weight * values``, one limb each (clients pre-weight)."""
    return encrypt_chunks(context, key, values, weight=weight)


def add_upload(total: EncryptedSum, ciphertexts: Iterable[RingBlob]) -> None:
    """The aggregator's work for one upload: additions only."""
    total.add_chunks(ciphertexts)


# -- values, records, clocks -----------------------------------------------------------
def value_chunks(seed: int, source: int, layout: Layout) -> Iterator[FloatArray]:
    """A client's values, one group at a time, the same in every process."""
    rng = np.random.default_rng([seed, source])
    for start, stop in layout.segments:
        for first in range(start, stop, layout.chunk):
            yield rng.uniform(-VALUE_RANGE, VALUE_RANGE, min(layout.chunk, stop - first))


def expected_chunks(seed: int, uploads: Sequence[Upload], layout: Layout
                    ) -> Iterator[FloatArray]:
    """The exact weighted average, group by group, recomputed from the seeds."""
    weights: dict[int, float] = {}
    for upload in uploads:
        weights[upload.source] = weights.get(upload.source, 0.0) + upload.weight
    streams = [value_chunks(seed, source, layout) for source in weights]
    for chunks in zip(*streams, strict=True):
        total = np.zeros(chunks[0].size)
        for weight, chunk in zip(weights.values(), chunks, strict=True):
            total += weight * chunk
        yield total


def pack_frames(frames: Iterable[bytes]) -> bytes:
    return b"".join(_RECORD_LENGTH.pack(len(frame)) + frame for frame in frames)


def unpack_frames(data: bytes) -> list[bytes]:
    frames, offset = [], 0
    while offset < len(data):
        (size,) = _RECORD_LENGTH.unpack_from(data, offset)
        offset += _RECORD_LENGTH.size
        frames.append(data[offset:offset + size])
        offset += size
    return frames


def read_records(path: Path, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
    """The records of ``path`` between byte offsets ``start`` and ``stop`` (or its end)."""
    with path.open("rb") as source:
        source.seek(start)
        while stop is None or source.tell() < stop:
            head = source.read(_RECORD_LENGTH.size)
            if not head:
                return
            (size,) = _RECORD_LENGTH.unpack(head)
            yield source.read(size)


class Overhead:
    """Seconds a role spends on what its figure leaves out: file I/O, drawing values."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def iterate(self, items: Iterator[T]) -> Iterator[T]:
        while True:
            start = time.perf_counter()
            item = next(items, None)
            self.seconds += time.perf_counter() - start
            if item is None:
                return
            yield item

    def write(self, out: IO[bytes], data: bytes) -> int:
        start = time.perf_counter()
        out.write(_RECORD_LENGTH.pack(len(data)))
        out.write(data)
        self.seconds += time.perf_counter() - start
        return len(data)


# -- keys on files (written by the parent, threshold_fl.bench.runner) --------------
def _load_joint(context: CkksContext, folder: Path) -> JointPublicKey:
    return decode_joint_public_key(context, (folder / "joint.key").read_bytes())


def _load_set(folder: Path) -> dict[str, Any]:
    keys: dict[str, Any] = json.loads((folder / "set.json").read_text())
    return keys


def _decryption_set(keys: dict[str, Any], group: int) -> DecryptionSet:
    """The set's binding for one group of ciphertexts (its masks, noise and pad differ
    from every other group's)."""
    members = tuple(int(m) for m in keys["members"])
    return DecryptionSet(members, len(members),
                         bytes.fromhex(keys["binding"]) + group.to_bytes(8, "big"))


def _load_threshold_key(folder: Path, keys: dict[str, Any], index: int) -> ThresholdKey:
    limbs = np.load(folder / f"threshold-{index}.npy")
    return ThresholdKey(index, {int(q): limbs[i] for i, q in enumerate(keys["moduli"])})


# -- roles (each runs in its own process) ---------------------------------------------
def _context(job: Job) -> CkksContext:
    return context_for(CkksParams.from_dict(job["params"]))


def _layout(job: Job) -> Layout:
    return Layout(int(job["length"]), int(job["chunk"]),
                  tuple((int(a), int(b)) for a, b in job["segments"]))


def _uploads(job: Job) -> list[Upload]:
    return [Upload(int(u["source"]), float(u["weight"])) for u in job["uploads"]]


GroupEncoder = Callable[[FloatArray, int, int], bytes]  # values, segment length, offset


def _write_upload(path: Path, layout: Layout, chunks: Iterator[FloatArray],
                  encode: GroupEncoder) -> Job:
    """Write one upload group by group; its seconds, bytes and byte span per segment."""
    overhead, sent, spans = Overhead(), 0, []
    values_of = overhead.iterate(chunks)
    started = time.perf_counter()
    with path.open("wb") as out:
        for start, stop in layout.segments:
            begin = out.tell()
            for offset in range(0, stop - start, layout.chunk):
                sent += overhead.write(out, encode(next(values_of), stop - start, offset))
            spans.append((begin, out.tell()))
    return {"seconds": time.perf_counter() - started - overhead.seconds, "bytes": sent,
            "spans": spans}


def encrypt_role(job: Job) -> Job:
    """Clients: encrypt and frame each listed upload to its file."""
    context, layout, folder = _context(job), _layout(job), Path(job["folder"])
    key = _load_joint(context, folder).key

    def upload_encoder(weight: float) -> GroupEncoder:
        def encode(values: FloatArray, length: int, offset: int) -> bytes:
            blobs = [build(c) for c in encrypt_upload(context, key, values, weight)]
            meta = {"key_id": key.key_id, "length": length, "aggregated": False,
                    "first": offset // context.values_per_ciphertext,
                    "count": ciphertext_count(context, length)}
            return encode_frame(FrameKind.CIPHERTEXTS, context.fingerprint, meta, blobs)
        return encode

    results = [_write_upload(Path(path), layout, value_chunks(int(job["seed"]), u.source, layout),
                             upload_encoder(u.weight))
               for u, path in zip(_uploads(job), job["paths"], strict=True)]
    return {"uploads": results}


def _split_aggregate(context: CkksContext, vector: EncryptedVector, c1_out: IO[bytes],
                     c0_out: IO[bytes], overhead: Overhead) -> tuple[int, list[int]]:
    """The aggregate cut into c0 (the aggregator keeps it) and c1, framed for the members
    of the set: one run per group of ciphertexts.  The c1 bytes and each group's length."""
    sent, lengths, step = 0, [], context.values_per_ciphertext
    c0, c1, _ = ring_parts(context, vector)
    for first in range(0, c1.shape[0], GROUP_CIPHERTEXTS):
        count = min(GROUP_CIPHERTEXTS, c1.shape[0] - first)
        length = min(count * step, vector.length - first * step)
        frames = list(encode_polynomials(context, PolynomialRole.C1, vector.key_id, length,
                                         c1[first:first + count]))
        sent += sum(len(frame) for frame in frames)
        lengths.append(length)
        overhead.write(c1_out, pack_frames(frames))
        overhead.write(c0_out, np.ascontiguousarray(c0[first:first + count]).tobytes())
    return sent, lengths


def aggregate_role(job: Job) -> Job:
    """Aggregator: every upload streamed into one running sum per segment, then the sum
    cut into c0 and the members' c1 frames (timed apart: "split")."""
    context, layout, folder = _context(job), _layout(job), Path(job["folder"])
    key_id = _load_joint(context, folder).key_id
    overhead, sent, split, groups = Overhead(), 0, 0.0, []
    started = time.perf_counter()
    with (folder / "c1.bin").open("wb") as c1_out, (folder / "c0.bin").open("wb") as c0_out:
        for index, (start, stop) in enumerate(layout.segments):
            total = EncryptedSum(context, key_id, stop - start)
            for item in job["inputs"]:
                frames = overhead.iterate(read_records(Path(item["path"]), *item["spans"][index]))
                add_upload(total,
                           stream_vector(context, frames, key_id=key_id, length=stop - start))
            aggregate = total.result()
            del total  # only the aggregate is split
            cut = time.perf_counter()
            before = overhead.seconds
            bytes_, lengths = _split_aggregate(context, aggregate, c1_out, c0_out, overhead)
            split += time.perf_counter() - cut - (overhead.seconds - before)
            sent += bytes_
            groups += lengths
    return {"seconds": time.perf_counter() - started - overhead.seconds - split,
            "split_seconds": split, "bytes": sent, "groups": groups}


def share_role(job: Job) -> Job:
    """Members of the decryption set: each listed member's masked shares of the c1
    parts, streamed group by group."""
    context, folder = _context(job), Path(job["folder"])
    key_id, keys = _load_joint(context, folder).key_id, _load_set(folder)
    limit, groups = job["ciphertexts"], [int(length) for length in job["groups"]]
    sigma, members = threshold_kit(context).sigma, [int(m) for m in keys["members"]]
    group_key = bytes.fromhex(keys["group_key"])
    results = []
    for index in (int(i) for i in job["members"]):
        pair_keys = {other: bytes.fromhex(keys["pair_keys"][
            f"{min(index, other)}-{max(index, other)}"]) for other in members if other != index}
        noise_seed = bytes.fromhex(keys["noise_seeds"][str(index)])
        overhead, sent, done = Overhead(), 0, 0
        with _load_threshold_key(folder, keys, index) as key:
            started = time.perf_counter()
            with (folder / f"share-{index}.bin").open("wb") as out:
                records = overhead.iterate(read_records(folder / "c1.bin"))
                for group, (record, length) in enumerate(zip(records, groups, strict=False)):
                    c1 = decode_polynomials(context, unpack_frames(record), PolynomialRole.C1,
                                            key_id=key_id, length=length)
                    dset = _decryption_set(keys, group)
                    shares = decryption_shares(
                        c1, ShareRounding.of(context), key, dset, sigma=sigma,
                        noise_seed=noise_seed, pair_keys=pair_keys,
                        group_key=group_key if index == dset.pad_holder else None, attempt=1)
                    frames = list(encode_polynomials(context, PolynomialRole.SHARE, key_id,
                                                     length, shares))
                    sent += sum(len(frame) for frame in frames)
                    overhead.write(out, pack_frames(frames))
                    done += c1.shape[0]
                    if limit is not None and done >= limit:
                        break
            results.append({"seconds": time.perf_counter() - started - overhead.seconds,
                            "bytes": sent, "ciphertexts": done})
    return {"members": results}


def fuse_role(job: Job) -> Job:
    """Aggregator: c0 plus the t members' shares, group by group (blind fusion), framed
    for every client."""
    context, folder = _context(job), Path(job["folder"])
    key_id, keys = _load_joint(context, folder).key_id, _load_set(folder)
    groups = [int(length) for length in job["groups"]]
    rounding = ShareRounding.of(context)
    limbs, n = len(rounding.moduli), context.ring.ring_dimension
    overhead, sent, fused_groups = Overhead(), 0, 0
    shares = [overhead.iterate(read_records(folder / f"share-{index}.bin"))
              for index in keys["members"]]
    c0_records = overhead.iterate(read_records(folder / "c0.bin"))
    started = time.perf_counter()
    with (folder / "fused.bin").open("wb") as out:
        for records, length in zip(zip(*shares, strict=True), groups, strict=False):
            c0 = np.frombuffer(next(c0_records), dtype=np.uint64).reshape(-1, limbs, n)
            arrays = [decode_polynomials(context, unpack_frames(r), PolynomialRole.SHARE,
                                         key_id=key_id, length=length) for r in records]
            fused = blind_fusion(c0, arrays, rounding)
            frames = list(encode_polynomials(context, PolynomialRole.FUSED, key_id, length,
                                             fused))
            sent += sum(len(frame) for frame in frames)
            overhead.write(out, pack_frames(frames))
            fused_groups += 1
    if fused_groups == 0:
        raise RoleFailed("no decryption share was fused")
    return {"seconds": time.perf_counter() - started - overhead.seconds, "bytes": sent,
            "groups": fused_groups}


def decode_role(job: Job) -> Job:
    """A client: the fused frames unpadded and decoded, checked against the exact
    weighted average."""
    context, layout, folder = _context(job), _layout(job), Path(job["folder"])
    key_id, keys = _load_joint(context, folder).key_id, _load_set(folder)
    uploads, groups = _uploads(job), [int(length) for length in job["groups"]]
    group_key = bytes.fromhex(keys["group_key"])
    overhead, max_error, decoded = Overhead(), 0.0, 0
    expected = expected_chunks(int(job["seed"]), uploads, layout)  # timed as overhead below
    records = overhead.iterate(read_records(folder / "fused.bin"))
    started = time.perf_counter()
    for group, (record, length) in enumerate(zip(records, groups, strict=False)):
        fused = decode_polynomials(context, unpack_frames(record), PolynomialRole.FUSED,
                                   key_id=key_id, length=length)
        clear = unpad(fused, group_key, _decryption_set(keys, group), 1,
                      ShareRounding.of(context))
        values = decode_sums(context, clear, length, coefficients=True)
        check = time.perf_counter()
        max_error = max(max_error, float(np.abs(values - next(expected)).max()))
        decoded += values.size
        overhead.seconds += time.perf_counter() - check
    if decoded == 0:
        raise RoleFailed("no fused polynomial was decoded")
    return {"seconds": time.perf_counter() - started - overhead.seconds, "values": decoded,
            "max_error": max_error, "error_bound": context.error_bound(len(uploads))}


def plain_role(job: Job) -> Job:
    """The plaintext FedAvg round: float32 uploads and the same streamed weighted sum."""
    layout, folder, seed = _layout(job), Path(job["folder"]), int(job["seed"])
    uploads = _uploads(job)

    def serialise(values: FloatArray, length: int, offset: int) -> bytes:
        return values.astype(np.float32).tobytes()

    distinct = list(dict.fromkeys(uploads))
    written = {u: _write_upload(folder / f"plain-{i}.bin", layout,
                                value_chunks(seed, u.source, layout), serialise)
               for i, u in enumerate(distinct)}
    overhead = Overhead()
    started = time.perf_counter()
    with (folder / "plain-aggregate.bin").open("wb") as out:
        for index, (start, stop) in enumerate(layout.segments):
            total = np.zeros(stop - start)
            for upload in uploads:
                offset, path = 0, folder / f"plain-{distinct.index(upload)}.bin"
                for data in overhead.iterate(read_records(path, *written[upload]["spans"][index])):
                    values = np.frombuffer(data, dtype=np.float32)
                    total[offset:offset + values.size] += upload.weight * values
                    offset += values.size
            for first in range(0, total.size, layout.chunk):
                overhead.write(out, total[first:first + layout.chunk].astype(np.float32).tobytes())
    seconds = time.perf_counter() - started - overhead.seconds
    results = (np.frombuffer(data, dtype=np.float32)
               for data in read_records(folder / "plain-aggregate.bin"))
    max_error = max(float(np.abs(got - want).max()) for got, want in
                    zip(results, expected_chunks(seed, uploads, layout), strict=True))
    return {"serialise": [written[u]["seconds"] for u in distinct], "aggregate": seconds,
            "bytes": written[uploads[0]]["bytes"], "max_error": max_error}


ROLES: dict[str, Callable[[Job], Job]] = {
    "baseline": lambda job: {}, "encrypt": encrypt_role, "aggregate": aggregate_role,
    "share": share_role, "fuse": fuse_role, "decode": decode_role, "plain": plain_role}




def main(argv: Sequence[str] | None = None) -> int:
    """``python -m threshold_fl.bench.roles JOB RESULT``: run one role (internal)."""
    job_path, result_path = list(sys.argv[1:] if argv is None else argv)
    job = json.loads(Path(job_path).read_text())
    try:
        result = ROLES[job["role"]](job)
    except ThresholdFLError as error:
        print(f"{job['role']}: {error}", file=sys.stderr)
        return 1
    result["peak_mib"] = peak_mib()
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
