"""Fuzzing OpenFHE blobs through the project's receiving functions, in a subprocess.

Each mutated blob travels in a valid frame (digest and key id recomputed), as an
authenticated but malicious sender would send it, to the real receiver
(``wire.decode_*``: frame checks, the ring check, then OpenFHE).  Every mutation's
expected outcome is computed from what it did: a structural defect must be refused
with the ring check's FrameError; a change that keeps the structure (a coefficient
still below its modulus, a key tag still hex, a scale within tolerance) must pass.

``python tests/test_ring_fuzz.py COUNT [SEED]`` runs the fuzzer and prints a JSON
summary; the tests run it in a subprocess, so a crash shows up as a signal.
"""

from __future__ import annotations

import json
import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from crypto_helpers import RingSample, ring_frame, ring_receivers, ring_samples

from threshold_fl.crypto import CkksContext, CkksParams, context_for
from threshold_fl.crypto.ring_layout import Walker
from threshold_fl.errors import FrameError, ThresholdFLError

REPO = Path(__file__).resolve().parent.parent
FUZZ_COUNT = 10_000
HEX = set(b"0123456789abcdef")
SCALE_TOLERANCE = 1e-9  # as threshold_fl.crypto.ring_layout


@dataclass(frozen=True)
class Target:
    """A valid sample and where its fields are."""

    name: str
    sample: RingSample
    fields: list[tuple[str, int, int]]  # (field, offset, size), in order
    regions: list[tuple[int, int]]  # (offset, bound) of coefficient runs: their modulus
    n: int

    def named(self, suffix: str) -> list[tuple[int, int]]:
        return [(offset, size) for name, offset, size in self.fields if name.endswith(suffix)]

    def one(self, name: str) -> tuple[int, int] | None:
        found = [(offset, size) for field, offset, size in self.fields if field == name]
        return found[0] if found else None


@dataclass(frozen=True)
class Mutation:
    blob: bytes
    refuse: bool  # True: a structural defect, which must be refused


Mutator = Callable[[Target, np.random.Generator], Mutation]


def _u64(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + struct.pack("<Q", value) + blob[offset + 8 :]


def _pick(rng: np.random.Generator, items: list[tuple[int, int]]) -> tuple[int, int]:
    return items[int(rng.integers(0, len(items)))]


def _other(rng: np.random.Generator, old: int, choices: list[int]) -> int:
    options = [c for c in choices if c != old] + [int(rng.integers(0, 2**63, dtype=np.uint64))]
    return options[int(rng.integers(0, len(options)))]


# -- mutation classes ------------------------------------------------------------------
def flip_structure(target: Target, rng: np.random.Generator) -> Mutation:
    """One bit flipped outside the coefficients (header, lengths, pointers, trailer)."""
    blob = target.sample.blob
    glue = [(o, s) for name, o, s in target.fields if not name.endswith("coefficients") and s]
    offset, size = _pick(rng, glue)
    position = offset + int(rng.integers(0, size))
    edited = bytearray(blob)
    edited[position] ^= 1 << int(rng.integers(0, 8))
    tag = target.one("key tag")
    scale = target.one("scaling factor")
    if tag and tag[0] <= position < tag[0] + tag[1]:
        return Mutation(bytes(edited), edited[position] not in HEX)
    if scale and scale[0] <= position < scale[0] + 8:
        old, new = (struct.unpack_from("<d", b, scale[0])[0] for b in (blob, edited))
        return Mutation(bytes(edited), not math.isclose(new, old, rel_tol=SCALE_TOLERANCE))
    return Mutation(bytes(edited), True)


def flip_coefficient(target: Target, rng: np.random.Generator) -> Mutation:
    offset, bound = _pick(rng, target.regions)
    at = offset + 8 * int(rng.integers(0, target.n))
    value = struct.unpack_from("<Q", target.sample.blob, at)[0] ^ (1 << int(rng.integers(0, 64)))
    return Mutation(_u64(target.sample.blob, at, value), value >= bound)


def coefficient_in_range(target: Target, rng: np.random.Generator) -> Mutation:
    offset, bound = _pick(rng, target.regions)
    at = offset + 8 * int(rng.integers(0, target.n))
    value = int(rng.integers(0, bound, dtype=np.uint64))
    return Mutation(_u64(target.sample.blob, at, value), False)


def coefficient_out_of_range(target: Target, rng: np.random.Generator) -> Mutation:
    offset, bound = _pick(rng, target.regions)
    at = offset + 8 * int(rng.integers(0, target.n))
    value = int(rng.integers(bound, 2**64 - 1, dtype=np.uint64, endpoint=True))
    return Mutation(_u64(target.sample.blob, at, value), True)


def truncate(target: Target, rng: np.random.Generator) -> Mutation:
    return Mutation(target.sample.blob[: int(rng.integers(0, len(target.sample.blob)))], True)


def extend(target: Target, rng: np.random.Generator) -> Mutation:
    extra = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
    return Mutation(target.sample.blob + extra, True)


def edit_ring_dimension(target: Target, rng: np.random.Generator) -> Mutation:
    offset, _ = _pick(rng, target.named("ring dimension n"))
    n = target.n
    return Mutation(_u64(target.sample.blob, offset,
                         _other(rng, n, [n // 2, 2 * n, n + 1, n - 1, 0, 2**32 + n])), True)


def edit_limb_count(target: Target, rng: np.random.Generator) -> Mutation:
    offset, _ = _pick(rng, target.named("limb count"))
    old = struct.unpack_from("<Q", target.sample.blob, offset)[0]
    value = _other(rng, old, [0, old - 1, old + 1, 3, 2**31, 2**64 - 1])
    # A two-limb element shrunk to one is still refused: its moduli, parameters or
    # level no longer agree (or its second limb is trailing garbage).
    return Mutation(_u64(target.sample.blob, offset, value), True)


def edit_element_count(target: Target, rng: np.random.Generator) -> Mutation:
    where = target.one("element count") or target.named("limb count")[0]
    old = struct.unpack_from("<Q", target.sample.blob, where[0])[0]
    value = _other(rng, old, [0, 1, 2, 3, old + 1, 2**40])
    return Mutation(_u64(target.sample.blob, where[0], value), True)


def wrong_modulus(target: Target, rng: np.random.Generator) -> Mutation:
    offset, _ = _pick(rng, target.named(" modulus"))
    old = struct.unpack_from("<Q", target.sample.blob, offset)[0]
    moduli = [m for _, m in target.regions]
    value = _other(rng, old, [*moduli, old + 2, old - 2, 1, 0, 2**61 - 1])
    return Mutation(_u64(target.sample.blob, offset, value), True)


def edit_tag_length(target: Target, rng: np.random.Generator) -> Mutation:
    offset, _ = target.one("key tag length") or (0, 0)
    old = struct.unpack_from("<Q", target.sample.blob, offset)[0]
    return Mutation(_u64(target.sample.blob, offset, _other(rng, old, [0, 32, 31, 33, 64])), True)


def header_byte(target: Target, rng: np.random.Generator) -> Mutation:
    size = target.fields[0][2]
    edited = bytearray(target.sample.blob)
    position = int(rng.integers(0, size))
    edited[position] = (edited[position] + int(rng.integers(1, 256))) % 256
    return Mutation(bytes(edited), True)


def extra_limb(target: Target, rng: np.random.Generator) -> Mutation:
    """A copy of one limb inserted after it, the limb count raised to match."""
    blob = target.sample.blob
    names = [name for name, _, _ in target.fields]
    index = int(rng.integers(0, len(target.regions)))
    at = [i for i, name in enumerate(names) if name.endswith("coefficients")][index]
    element = names[at].split()[1]
    prefix = f"element {element} limb {names[at].split()[3]} "
    start = target.fields[at - 1][1]  # its ring dimension field
    end = next(o for name, o, _ in target.fields[at:] if not name.startswith(prefix))
    count_at = target.one(f"element {element} limb count")
    assert count_at is not None
    count = struct.unpack_from("<Q", blob, count_at[0])[0]
    grown = _u64(blob, count_at[0], count + 1)
    return Mutation(grown[:end] + struct.pack("<IB", 0x40000000, 1) + blob[start:end]
                    + grown[end:], True)


def extra_element(target: Target, rng: np.random.Generator) -> Mutation:
    """The element count raised and a copy of the last element appended."""
    blob = target.sample.blob
    count_at = target.one("element count")
    if count_at is None:  # a private key has one element and no count
        return Mutation(blob + blob[target.named("limb count")[0][0] :], True)
    elements = struct.unpack_from("<Q", blob, count_at[0])[0]
    last = target.one(f"element {elements - 1} limb count")
    assert last is not None
    tail = (target.one("slots") or (len(blob), 0))[0]
    grown = _u64(blob, count_at[0], elements + 1)
    return Mutation(grown[:tail] + blob[last[0] : tail] + grown[tail:], True)


MUTATORS: dict[str, Mutator] = {
    "flip outside coefficients": flip_structure,
    "flip in a coefficient": flip_coefficient,
    "coefficient below its bound": coefficient_in_range,
    "coefficient at or above its bound": coefficient_out_of_range,
    "truncation": truncate,
    "trailing bytes": extend,
    "wrong ring dimension n": edit_ring_dimension,
    "edited limb count": edit_limb_count,
    "edited element count": edit_element_count,
    "wrong modulus": wrong_modulus,
    "edited key tag length": edit_tag_length,
    "header byte": header_byte,
    "extra limb": extra_limb,
    "extra element": extra_element,
}


def targets(context: CkksContext) -> list[Target]:
    found = []
    for name, sample in ring_samples(context).items():
        walk = Walker(context.ring, sample.blob, sample.kind, trace=True)
        walk.run()
        assert walk.trace is not None
        found.append(Target(name, sample, walk.trace, list(walk.regions),
                            context.ring.ring_dimension))
    return found


def fuzz(count: int, seed: int) -> dict[str, object]:
    context = context_for(CkksParams())
    receivers = ring_receivers(context)
    pool = targets(context)
    rng = np.random.default_rng(seed)
    tally: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    failures: list[str] = []
    start = time.perf_counter()
    for _ in range(count):
        target = pool[int(rng.integers(0, len(pool)))]
        label = list(MUTATORS)[int(rng.integers(0, len(MUTATORS)))]
        mutation = MUTATORS[label](target, rng)
        frame = ring_frame(context, target.sample, mutation.blob)
        try:
            receivers[target.sample.frame_kind](frame)
            outcome = "passed"
        except FrameError as exc:
            outcome = "refused"
            reasons[_reason(str(exc))] += 1
            if mutation.refuse and not str(exc).startswith(("malformed", "a part length")):
                failures.append(f"{label} on {target.name}: refused late: {exc}")
        except ThresholdFLError as exc:
            outcome = "refused later"
            failures.append(f"{label} on {target.name}: {type(exc).__name__}: {exc}")
        expected = "refused" if mutation.refuse else "passed"
        # The ring check alone too: the frame layer refuses oversized blobs before it.
        try:
            context.ring.check(mutation.blob, target.sample.kind)
            alone = "passed"
        except FrameError:
            alone = "refused"
        if alone != expected:
            failures.append(f"{label} on {target.name}: the ring check alone {alone}")
        tally[f"{label}: {outcome}"] += 1
        tally[outcome] += 1
        if outcome != expected:
            failures.append(f"{label} on {target.name}: expected {expected}, {outcome}")
    return {"mutations": count, "seconds": round(time.perf_counter() - start, 1),
            "refused": tally["refused"], "passed": tally["passed"],
            "structural": sum(v for k, v in tally.items() if k.endswith(": refused")),
            "by_class": {k: v for k, v in sorted(tally.items()) if ":" in k},
            "reasons": dict(reasons.most_common(40)), "failures": failures[:20]}


def _reason(message: str) -> str:
    """The field a refusal names, without offsets and values (for the summary)."""
    field = message.split(": ", 1)[-1].split(" at byte")[0]
    return "".join(c if not c.isdigit() else "#" for c in field)


# -- the tests --------------------------------------------------------------------------
def _run(*arguments: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, *(["-c", script] if script else [__file__]), *arguments]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={"PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "PATH": "/usr/bin:/bin",
                               "OMP_NUM_THREADS": "1", "HOME": os.environ.get("HOME", "/tmp")})


def test_ten_thousand_mutated_blobs_never_crash_and_defects_are_refused() -> None:
    """(c) At least 10^4 mutated blobs of every kind through the real receivers: the
    subprocess exits 0 (no signal), every structural defect is refused by the ring
    check naming its field, and every structure-keeping change passes."""
    completed = _run(str(FUZZ_COUNT), "20261203")
    assert completed.returncode == 0, (
        f"fuzzing exited with {completed.returncode} (negative: killed by a signal)\n"
        f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    )
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    print(json.dumps(summary, indent=1))
    assert summary["mutations"] >= 10_000
    assert summary["failures"] == [], summary["failures"]
    assert summary["refused"] + summary["passed"] == summary["mutations"]
    assert summary["passed"] > 0 and summary["refused"] > 0.5 * summary["mutations"]


CRASH_SCRIPT = textwrap.dedent("""
    import struct, sys
    import openfhe
    from crypto_helpers import ring_frame, ring_receivers, ring_samples
    from threshold_fl.crypto import CkksParams, context_for
    from threshold_fl.errors import FrameError

    context = context_for(CkksParams())
    sample = ring_samples(context)["ciphertext upload"]
    # The lowest byte of tower 0's modulus in the serialised context, bit 0 flipped:
    # the modulus becomes even and OpenFHE's precomputation divides by zero.
    at = sample.blob.find(struct.pack("<Q", context.ring.moduli[0]))
    bad = bytearray(sample.blob)
    bad[at] ^= 1
    bad = bytes(bad)
    try:
        ring_receivers(context)[sample.frame_kind](ring_frame(context, sample, bad))
        print("ACCEPTED", flush=True)
    except FrameError as exc:
        print(f"rejected at {at}: {exc}", flush=True)
    print("session goes on", flush=True)
    openfhe.DeserializeCiphertextString(bad, openfhe.BINARY)  # OpenFHE alone
    print("OpenFHE survived", flush=True)
""")


def test_a_bit_flip_that_kills_openfhe_with_sigfpe_is_refused_first() -> None:
    """(d) The flipped bit that made OpenFHE die with SIGFPE is now refused by the
    receiving function with a reason, and the process goes on; handed to OpenFHE
    directly afterwards, the same bytes still kill the subprocess with SIGFPE."""
    completed = _run(script=CRASH_SCRIPT)
    assert "rejected at 246: malformed ciphertext: header byte (tower 0 parameters" in (
        completed.stdout), completed.stdout + completed.stderr
    assert "session goes on" in completed.stdout
    assert completed.returncode == -signal.SIGFPE, (completed.returncode, completed.stderr)


if __name__ == "__main__":
    result = fuzz(int(sys.argv[1]) if len(sys.argv) > 1 else FUZZ_COUNT,
                  int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(json.dumps(result))
    sys.exit(1 if result["failures"] else 0)
