"""The parent of a per-role round: it draws the keys, then runs each role of
:mod:`threshold_fl.bench.roles` in a fresh OS process, one at a time, and gathers
their seconds, bytes and peak memory.

The parent draws the threshold keys of the N clients (noise flooding on, the
library's default), deals each party's key share t-of-N (t = N // 2 + 1) and writes the
joint key, every member's threshold key and the decryption set's keys (pairwise mask
keys, the group key of the pad, noise seeds) to files (:func:`write_keys`); then
:func:`run_he_round` runs encrypt, aggregate, share, fuse and decode, each in its own
process (timings stay undistorted on a small machine), and :func:`run_plain_round` the
plaintext round.  A process that only imports the roles module (NumPy, OpenFHE, the
crypto layer) gives the baseline memory every role starts from
(:func:`baseline_peak_mib`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from threshold_fl.bench.crypto import decryption_threshold
from threshold_fl.bench.roles import ROLES_MODULE, Layout, RoleFailed, Upload, layout_for
from threshold_fl.crypto import (
    CkksContext,
    CkksParams,
    JointPublicKey,
    ciphertext_count,
    combine_public_shares,
    context_for,
    lead_keygen,
    member_keygen,
)
from threshold_fl.crypto.noise import wipe
from threshold_fl.crypto.shares import KeyLimbs
from threshold_fl.crypto.threshold import deal, threshold_key
from threshold_fl.crypto.wire import encode_joint_public_key
from threshold_fl.errors import ParameterError

__all__ = ["HeRound", "PlainRound", "baseline_peak_mib", "run_he_round", "run_plain_round",
           "run_role", "threads_note", "write_keys"]

Job = dict[str, Any]


# -- keys on files ---------------------------------------------------------------------
def write_keys(context: CkksContext, folder: Path, parties: int) -> JointPublicKey:
    """Threshold key generation for ``parties`` clients, t-of-N dealing and the
    decryption set 1..t's keys, written to files (the joint key as its wire frame)."""
    lead = lead_keygen(context, 1)
    members = [lead] + [member_keygen(context, index, lead.public_share)
                        for index in range(2, parties + 1)]
    joint = combine_public_shares(context, {m.index: m.public_share for m in members},
                                  lead.index)
    (folder / "joint.key").write_bytes(encode_joint_public_key(context, joint))
    threshold = decryption_threshold(parties)
    dealt = []
    for member in members:
        with KeyLimbs(context, member.secret.native) as limbs:
            dealt.append(deal(limbs, parties, threshold))
    moduli: list[int] = []
    for index in range(1, threshold + 1):  # the set: parties 1..t
        with threshold_key(index, [shares[index] for shares in dealt]) as key:
            moduli = list(key.limbs)
            np.save(folder / f"threshold-{index}.npy", np.stack(list(key.limbs.values())))
    for shares in dealt:
        for held in shares.values():
            for limb in held.values():
                wipe(limb)
    members_of_set = list(range(1, threshold + 1))
    keys = {"members": members_of_set, "moduli": moduli,
            "binding": os.urandom(32).hex(), "group_key": os.urandom(32).hex(),
            "noise_seeds": {str(m): os.urandom(32).hex() for m in members_of_set},
            "pair_keys": {f"{a}-{b}": os.urandom(32).hex()
                          for a in members_of_set for b in members_of_set if a < b}}
    (folder / "set.json").write_text(json.dumps(keys))
    return joint


# -- one process per role, one at a time ---------------------------------------------
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
    command = [sys.executable, "-m", ROLES_MODULE, str(job_path), str(result_path)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
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
    """One threshold round's figures (decryption by blind fusion with a set of t
    members); per-member lists are in member order."""

    length: int
    parties: int
    members: int  # t, the size of the decryption set
    distinct_uploads: int
    encrypt_s: tuple[float, ...]  # per distinct upload
    upload_bytes: int  # one client's upload
    aggregate_s: float
    split_s: float  # the aggregator cutting c0 and c1 out of the aggregate, c1 framed
    c1_bytes: int  # what a member downloads to make its share
    share_s: tuple[float, ...]  # per member, over decrypted_ciphertexts
    share_bytes: int  # member 1's share, what a member uploads
    fuse_s: float  # the aggregator's blind fusion, over decrypted_ciphertexts
    fused_bytes: int  # what every client downloads, over decrypted_ciphertexts
    decode_s: float  # one client, over decrypted_ciphertexts (every client does the same)
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
    """Refuse up front when the round's files cannot fit: the uploads, the aggregate's
    c0 and c1 (at most as large as one upload) and the t shares and the fused
    polynomials (a quarter of an upload each)."""
    ciphertexts = sum(ciphertext_count(context, b - a) for a, b in layout.segments)
    decrypted = min(ciphertexts, decrypt_ciphertexts or ciphertexts)
    fresh = 2 * 2 * 8 * context.params.resolved_ring_dimension  # two polynomials, two limbs
    need = fresh * (ciphertexts * (distinct + 1)
                    + decrypted * (decryption_threshold(parties) + 1) / 4)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ParameterError(f"this round needs about {need / 2**30:.1f} GiB of disk under "
                             f"{folder}, {free / 2**30:.1f} GiB are free; set TMPDIR elsewhere")


def _which(what: str, batch: Sequence[int], total: int) -> str:
    """'upload 2 of 3' or 'uploads 1-3 of 3' for progress lines."""
    if len(batch) == 1:
        return f"{what} {batch[0]} of {total}"
    plural = "parties" if what == "party" else f"{what}s"  # "members", "uploads"
    return f"{plural} {batch[0]}-{batch[-1]} of {total}"


def run_he_round(params: CkksParams, uploads: Sequence[Upload], length: int, seed: int,
                 folder: Path, *, process_per_client: bool = True,
                 decrypt_ciphertexts: int | None = None, threads: int = 1,
                 progress: Callable[[str], None] | None = None) -> HeRound:
    """One threshold round: N = len(uploads) parties, t = N // 2 + 1 of them decrypt; each
    distinct upload is encrypted once (the aggregator may be fed the same upload file
    several times)."""
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
        Path(path).unlink()  # frees the disk the shares need
    groups = aggregated["groups"]
    members = list(range(1, decryption_threshold(parties) + 1))
    shares, share_peaks = [], []
    for batch in ([[i] for i in members] if process_per_client else [members]):
        say(f"decryption shares of {_which('member', batch, len(members))}")
        result = run_role("share", {**common, "members": batch, "groups": groups,
                                    "ciphertexts": decrypt_ciphertexts}, folder, threads)
        shares += result["members"]
        share_peaks.append(result["peak_mib"])
    say("fusing the shares")
    fused = run_role("fuse", {**common, "groups": groups}, folder, threads)
    say("decoding the fused polynomials")
    decoded = run_role("decode", {**common, "groups": groups,
                                  "uploads": [vars(u) for u in uploads]}, folder, threads)
    if decrypt_ciphertexts is None and decoded["values"] != length:
        raise RoleFailed(f"decoding gave {decoded['values']} values, the round has {length}")
    return HeRound(
        length, parties, len(members), len(distinct), tuple(e["seconds"] for e in encrypted),
        encrypted[0]["bytes"], aggregated["seconds"], aggregated["split_seconds"],
        aggregated["bytes"], tuple(s["seconds"] for s in shares), shares[0]["bytes"],
        fused["seconds"], fused["bytes"], decoded["seconds"],
        sum(ciphertext_count(context, b - a) for a, b in layout.segments),
        shares[0]["ciphertexts"], decoded["max_error"], decoded["error_bound"],
        {"encrypt": max(encrypt_peaks), "aggregate": aggregated["peak_mib"],
         "share": max(share_peaks), "fuse": fused["peak_mib"], "decode": decoded["peak_mib"]},
        time.perf_counter() - started)


def run_plain_round(uploads: Sequence[Upload], layout: Layout, seed: int,
                    folder: Path) -> PlainRound:
    """The same FedAvg round on float32 vectors, in one process."""
    job = {"length": layout.length, "chunk": layout.chunk, "segments": layout.segments,
           "seed": seed, "uploads": [vars(u) for u in uploads]}
    result = run_role("plain", job, folder)
    return PlainRound(layout.length, tuple(result["serialise"]), result["aggregate"],
                      result["bytes"], result["max_error"], result["peak_mib"])
