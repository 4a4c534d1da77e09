"""One federated round with every role in its own OS process, so that each role's
seconds and peak memory (``VmHWM`` of that process) are its own.

The parent draws the threshold keys of the N clients (noise flooding on, the
library's default) and writes them to files with the wire encoders; then, one
process at a time (timings stay undistorted on a small machine):

- **client** (``encrypt``): draws its values chunk by chunk from a seeded
  generator (uniform in [-0.1, 0.1]), encrypts them a few ciphertexts at a time
  and writes the upload frames to a file: the vector is never held whole;
- **aggregator** (``aggregate``): streams every upload file into the running sum,
  so it holds one running aggregate and one staged input, whatever N is, and
  writes the aggregate;
- **client** (``partial_decrypt``): streams the aggregate and writes its share;
- **fusion** (``fuse``): fuses the N shares group by group, decodes, and checks
  the result against the weighted average recomputed from the same seeds.

A process that only imports this module (NumPy, OpenFHE, the crypto layer) gives
the baseline memory every role starts from.  The plaintext round (``plain``:
float32 serialisation and the same streamed weighted sum) runs in one process.

Vectors longer than the library's largest vector (MAX_VECTOR_LENGTH) travel as
consecutive segments, each its own vector.  Files hold length-prefixed records:
upload files one frame per record, aggregate and share files one run of frames
per group of ciphertexts.  A role's seconds leave out file I/O (a network would
replace the files) and drawing the test values; they include serialisation.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
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
    PartyKeys,
    PublicKey,
    ThresholdSecret,
    ciphertext_count,
    combine_public_shares,
    context_for,
    encrypt_chunks,
    fuse_partial_decryptions,
    lead_keygen,
    member_keygen,
    partial_decrypt,
)
from threshold_fl.crypto.frames import FrameKind, encode_frame
from threshold_fl.crypto.ring import RingBlob, build
from threshold_fl.crypto.wire import (
    decode_joint_public_key,
    decode_partial_decryption,
    decode_public_key,
    decode_secret_key,
    decode_vector,
    encode_joint_public_key,
    encode_partial_decryption,
    encode_public_key,
    encode_secret_key,
    encode_vector,
    stream_vector,
)
from threshold_fl.errors import ParameterError, ThresholdFLError

__all__ = ["HeRound", "Layout", "PlainRound", "RoleFailed", "Upload", "baseline_peak_mib",
           "layout_for", "run_he_round", "run_plain_round", "threads_note"]

Job = dict[str, Any]
T = TypeVar("T")

GROUP_CIPHERTEXTS = 8  # ciphertexts per upload frame, per aggregate run and per share run
VALUE_RANGE = 0.1  # client values are uniform in [-VALUE_RANGE, VALUE_RANGE]
_MODULE = "threshold_fl.bench.roles"
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


# -- keys on files ---------------------------------------------------------------------
def write_keys(context: CkksContext, folder: Path, parties: int) -> JointPublicKey:
    """Threshold key generation for ``parties`` clients, written as wire frames."""
    lead = lead_keygen(context, 1)
    members = [lead] + [member_keygen(context, index, lead.public_share)
                        for index in range(2, parties + 1)]
    joint = combine_public_shares(context, {m.index: m.public_share for m in members},
                                  lead.index)
    (folder / "joint.key").write_bytes(encode_joint_public_key(context, joint))
    for member in members:
        frames = [encode_public_key(context, member.public_share, party_index=member.index),
                  encode_secret_key(context, member.secret)]
        (folder / f"party-{member.index}.key").write_bytes(pack_frames(frames))
    return joint


def _load_joint(context: CkksContext, folder: Path) -> JointPublicKey:
    return decode_joint_public_key(context, (folder / "joint.key").read_bytes())


def _load_party(context: CkksContext, folder: Path, joint: JointPublicKey,
                index: int) -> ThresholdSecret:
    public_frame, secret_frame = unpack_frames((folder / f"party-{index}.key").read_bytes())
    party_index, public = decode_public_key(context, public_frame)
    return joint.bind(PartyKeys(party_index, public, decode_secret_key(context, secret_frame)))


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


def _write_aggregate(context: CkksContext, vector: EncryptedVector, out: IO[bytes],
                     overhead: Overhead) -> int:
    """The aggregate as one run per group of ciphertexts (what clients stream back)."""
    sent, step = 0, context.values_per_ciphertext
    for first in range(0, len(vector.ciphertexts), GROUP_CIPHERTEXTS):
        group = vector.ciphertexts[first:first + GROUP_CIPHERTEXTS]
        length = min(len(group) * step, vector.length - first * step)
        part = EncryptedVector(context.fingerprint, vector.key_id, length, group,
                               aggregated=True)
        frames = list(encode_vector(context, part))
        sent += sum(len(frame) for frame in frames)
        overhead.write(out, pack_frames(frames))
    return sent


def aggregate_role(job: Job) -> Job:
    """Aggregator: every upload streamed into one running sum per segment."""
    context, layout, folder = _context(job), _layout(job), Path(job["folder"])
    key_id = _load_joint(context, folder).key_id
    overhead, sent = Overhead(), 0
    started = time.perf_counter()
    with (folder / "aggregate.bin").open("wb") as out:
        for index, (start, stop) in enumerate(layout.segments):
            total = EncryptedSum(context, key_id, stop - start)
            for item in job["inputs"]:
                frames = overhead.iterate(read_records(Path(item["path"]), *item["spans"][index]))
                add_upload(total,
                           stream_vector(context, frames, key_id=key_id, length=stop - start))
            aggregate = total.result()
            del total  # only the aggregate is written
            sent += _write_aggregate(context, aggregate, out, overhead)
    return {"seconds": time.perf_counter() - started - overhead.seconds, "bytes": sent}


def partial_decrypt_role(job: Job) -> Job:
    """Clients: each listed party's share of the aggregate, streamed group by group."""
    context, folder = _context(job), Path(job["folder"])
    joint = _load_joint(context, folder)
    limit = job["ciphertexts"]
    results = []
    for index in job["parties"]:
        secret = _load_party(context, folder, joint, int(index))
        overhead, sent, done = Overhead(), 0, 0
        started = time.perf_counter()
        with (folder / f"partial-{index}.bin").open("wb") as out:
            for record in overhead.iterate(read_records(folder / "aggregate.bin")):
                vector = decode_vector(context, unpack_frames(record))
                share = partial_decrypt(context, secret, vector,
                                        lead=secret.index == joint.lead_index)
                frames = list(encode_partial_decryption(context, share))
                sent += sum(len(frame) for frame in frames)
                overhead.write(out, pack_frames(frames))
                done += len(vector.ciphertexts)
                if limit is not None and done >= limit:
                    break
        results.append({"seconds": time.perf_counter() - started - overhead.seconds,
                        "bytes": sent, "ciphertexts": done})
    return {"parties": results}


def fuse_role(job: Job) -> Job:
    """Fusion of the N shares, decoded and checked against the exact weighted average."""
    context, layout, folder = _context(job), _layout(job), Path(job["folder"])
    joint, uploads = _load_joint(context, folder), _uploads(job)
    overhead, max_error, fused = Overhead(), 0.0, 0
    shares = [overhead.iterate(read_records(folder / f"partial-{index}.bin"))
              for index in joint.party_indices]
    expected = expected_chunks(int(job["seed"]), uploads, layout)  # timed as overhead below
    started = time.perf_counter()
    for records in zip(*shares, strict=True):
        partials = [decode_partial_decryption(context, unpack_frames(r)) for r in records]
        values = fuse_partial_decryptions(context, joint, partials)
        check = time.perf_counter()
        max_error = max(max_error, float(np.abs(values - next(expected)).max()))
        fused += values.size
        overhead.seconds += time.perf_counter() - check
    if fused == 0:
        raise RoleFailed("no partial decryption was fused")
    return {"seconds": time.perf_counter() - started - overhead.seconds, "values": fused,
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
    "partial_decrypt": partial_decrypt_role, "fuse": fuse_role, "plain": plain_role}


# -- the parent: one process per role, one at a time ----------------------------------
def run_role(role: str, job: Job, folder: Path, threads: int = 1) -> Job:
    """Run ``role`` in a fresh ``python -m threshold_fl.bench.roles`` process; its result.

    ``threads``: OpenMP threads for OpenFHE in that process (0: OpenMP's default).  One
    thread keeps timings stable when other work shares the cores: OpenMP's waiting
    threads otherwise slow every operation down many times over.
    """
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    handle, job_name = tempfile.mkstemp(prefix=f"{role}-", suffix=".json", dir=folder)
    os.close(handle)
    job_path, result_path = Path(job_name), Path(job_name).with_suffix(".result.json")
    job_path.write_text(json.dumps({"role": role, "folder": str(folder), **job}))
    completed = subprocess.run([sys.executable, "-m", _MODULE, str(job_path), str(result_path)],
                               capture_output=True, text=True, check=False, env=env)
    if completed.returncode != 0:
        lines = completed.stderr.strip().splitlines() or ["(no error output)"]
        raise RoleFailed(f"the {role} process failed (exit {completed.returncode}): {lines[-1]}")
    result: Job = json.loads(result_path.read_text())
    return result


def threads_note(threads: int) -> str:
    """How a suite's markdown names its ``--threads`` choice."""
    return "OpenMP's default threads" if threads == 0 else f"OMP_NUM_THREADS={threads}"


def baseline_peak_mib(threads: int = 1) -> float:
    """Peak memory of a process that only imports NumPy, OpenFHE and the crypto layer."""
    with tempfile.TemporaryDirectory() as scratch:
        return float(run_role("baseline", {}, Path(scratch), threads)["peak_mib"])


@dataclass(frozen=True)
class HeRound:
    """One threshold round's figures; per-party lists are in party order."""

    length: int
    parties: int
    distinct_uploads: int
    encrypt_s: tuple[float, ...]  # per distinct upload
    upload_bytes: int  # one client's upload
    aggregate_s: float
    download_bytes: int  # the aggregate
    partial_decrypt_s: tuple[float, ...]  # per party, over decrypted_ciphertexts
    partial_bytes: int  # party 1's share
    fuse_s: float
    ciphertexts: int
    decrypted_ciphertexts: int
    max_error: float
    error_bound: float
    peak_mib: dict[str, float]  # role -> peak of its process(es)
    wall_s: float


@dataclass(frozen=True)
class PlainRound:
    length: int
    serialise_s: tuple[float, ...]  # per distinct upload
    aggregate_s: float
    upload_bytes: int
    max_error: float
    peak_mib: float


def _check_disk(context: CkksContext, folder: Path, layout: Layout, distinct: int,
                parties: int, decrypt_ciphertexts: int | None) -> None:
    """Refuse up front when the round's files cannot fit: the uploads, the aggregate
    (at most as large as one) and the shares (a quarter of one, per party)."""
    ciphertexts = sum(ciphertext_count(context, b - a) for a, b in layout.segments)
    decrypted = min(ciphertexts, decrypt_ciphertexts or ciphertexts)
    fresh = 2 * 2 * 8 * context.params.resolved_ring_dimension  # two polynomials, two limbs
    need = fresh * (ciphertexts * (distinct + 1) + decrypted * parties / 4)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ParameterError(f"this round needs about {need / 2**30:.1f} GiB of disk under "
                             f"{folder}, {free / 2**30:.1f} GiB are free; set TMPDIR elsewhere")


def _which(what: str, batch: Sequence[int], total: int) -> str:
    """'upload 2 of 3' or 'uploads 1-3 of 3' for progress lines."""
    if len(batch) == 1:
        return f"{what} {batch[0]} of {total}"
    plural = "parties" if what == "party" else f"{what}s"
    return f"{plural} {batch[0]}-{batch[-1]} of {total}"


def run_he_round(params: CkksParams, uploads: Sequence[Upload], length: int, seed: int,
                 folder: Path, *, process_per_client: bool = True,
                 decrypt_ciphertexts: int | None = None, threads: int = 1,
                 progress: Callable[[str], None] | None = None) -> HeRound:
    """One threshold round: N = len(uploads) parties; each distinct upload is encrypted once
    (the aggregator may be fed the same upload file several times)."""
    say = progress or (lambda message: None)
    started = time.perf_counter()
    context, parties = context_for(params), len(uploads)
    layout = layout_for(length, context.values_per_ciphertext)
    distinct = list(dict.fromkeys(uploads))
    _check_disk(context, folder, layout, len(distinct), parties, decrypt_ciphertexts)
    write_keys(context, folder, parties)
    common = {"params": params.to_dict(), "length": length, "chunk": layout.chunk,
              "segments": layout.segments, "seed": seed}
    paths = [str(folder / f"upload-{i}.bin") for i in range(len(distinct))]
    batches = [[i] for i in range(len(distinct))] if process_per_client else [
        list(range(len(distinct)))]
    encrypted, encrypt_peaks = [], []
    for batch in batches:
        say(f"encrypting {_which('upload', [i + 1 for i in batch], len(distinct))}")
        result = run_role("encrypt", {**common, "uploads": [vars(distinct[i]) for i in batch],
                                      "paths": [paths[i] for i in batch]}, folder, threads)
        encrypted += result["uploads"]
        encrypt_peaks.append(result["peak_mib"])
    say(f"aggregating {parties} uploads")
    inputs = [{"path": paths[distinct.index(u)], "weight": u.weight,
               "spans": encrypted[distinct.index(u)]["spans"]} for u in uploads]
    aggregated = run_role("aggregate", {**common, "inputs": inputs}, folder, threads)
    for path in paths:
        Path(path).unlink()  # frees the disk the partial decryptions need
    indices = list(range(1, parties + 1))
    shares, share_peaks = [], []
    for batch in ([[i] for i in indices] if process_per_client else [indices]):
        say(f"partial decryption of {_which('party', batch, parties)}")
        result = run_role("partial_decrypt", {**common, "parties": batch,
                                              "ciphertexts": decrypt_ciphertexts}, folder,
                          threads)
        shares += result["parties"]
        share_peaks.append(result["peak_mib"])
    say("fusing the shares")
    fused = run_role("fuse", {**common, "uploads": [vars(u) for u in uploads]}, folder,
                     threads)
    if decrypt_ciphertexts is None and fused["values"] != length:
        raise RoleFailed(f"fusion decoded {fused['values']} values, the round has {length}")
    return HeRound(
        length, parties, len(distinct), tuple(e["seconds"] for e in encrypted),
        encrypted[0]["bytes"], aggregated["seconds"], aggregated["bytes"],
        tuple(s["seconds"] for s in shares), shares[0]["bytes"], fused["seconds"],
        sum(ciphertext_count(context, b - a) for a, b in layout.segments),
        shares[0]["ciphertexts"], fused["max_error"], fused["error_bound"],
        {"encrypt": max(encrypt_peaks), "aggregate": aggregated["peak_mib"],
         "partial_decrypt": max(share_peaks), "fuse": fused["peak_mib"]},
        time.perf_counter() - started)


def run_plain_round(uploads: Sequence[Upload], layout: Layout, seed: int,
                    folder: Path) -> PlainRound:
    """The same FedAvg round on float32 vectors, in one process."""
    job = {"length": layout.length, "chunk": layout.chunk, "segments": layout.segments,
           "seed": seed, "uploads": [vars(u) for u in uploads]}
    result = run_role("plain", job, folder)
    return PlainRound(layout.length, tuple(result["serialise"]), result["aggregate"],
                      result["bytes"], result["max_error"], result["peak_mib"])


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
