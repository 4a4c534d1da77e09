"""Structural checks of OpenFHE blobs, and their ring elements as numpy arrays.

OpenFHE deserialises whatever bytes it is handed, and malformed ones can kill the
process (SIGFPE, SIGSEGV, SIGABRT, or hang).  So every blob is walked first, by
structure (the grammar is in :mod:`threshold_fl.crypto.ring_layout`), against a
template learnt once per context from real OpenFHE objects: fixed header bytes,
the moduli and roots of unity, the pointer ids the header registers, class
versions and trailer constants.  Anything else raises FrameError naming the field.

A coefficient changed within its modulus is structurally valid and passes: the
check guarantees OpenFHE a well-formed object, not an honest one.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from threshold_fl.arrays import U64Array
from threshold_fl.crypto.ring_layout import (
    TOWER,
    U32,
    U64,
    BlobKind,
    BlobSummary,
    HeaderNotes,
    Kinds,
    Outer,
    Role,
    Walker,
    check_coefficients,
    coefficient_runs,
)
from threshold_fl.errors import CryptoError, FrameError, ParameterError

__all__ = [
    "BlobKind",
    "BlobSummary",
    "Kinds",
    "RingBlob",
    "RingTemplate",
    "TemplateSamples",
    "build",
    "learn_template",
]


@dataclass(frozen=True)
class RingTemplate:
    """What this context's OpenFHE blobs look like, learnt from real objects."""

    ring_dimension: int
    slots: int
    moduli: tuple[int, ...]
    headers: dict[Outer, bytes] = field(repr=False)
    towers: tuple[bytes, ...] = field(repr=False)  # tower params content, per tower
    objects: dict[int, Role] = field(repr=False)  # pointer ids the header registers
    next_id: int
    constants: dict[str, int] = field(repr=False)  # class versions, trailer constants
    scales: dict[tuple[int, int], float] = field(repr=False)  # (level, degree) -> scale
    header_notes: dict[Outer, HeaderNotes] = field(repr=False)  # named header byte ranges
    # Accepted layouts by (kind, length); filled as blobs are checked.
    layouts: dict[tuple[Kinds, int], list[_Layout]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def limbs(self) -> int:
        return len(self.moduli)

    def check(self, data: bytes, kind: Kinds) -> BlobSummary:
        """Walk ``data`` as a ``kind`` blob; raise FrameError unless it is well formed.

        ``kind`` may be a tuple of kinds of one class told apart by element count
        (a ciphertext or a decryption share).  Coefficients must be below their
        modulus.  Copies nothing, so a secret key checked here leaves no copy to wipe.
        """
        return self._layout(data, kind).summary

    def parse(self, data: bytes, kind: Kinds) -> RingBlob:
        """Check ``data`` and return its ring elements as (elements, limbs, n) uint64.

        The array is a copy: call :meth:`RingBlob.wipe` when it holds secret material.
        """
        layout = self._layout(data, kind)
        n, limbs = self.ring_dimension, len(layout.summary.moduli)
        elements = np.empty((layout.summary.elements, limbs, n), dtype=np.uint64)
        for index, (offset, _) in enumerate(layout.regions):
            elements[divmod(index, limbs)] = np.frombuffer(data, dtype="<u8", count=n,
                                                           offset=offset)
        return RingBlob(layout.summary, elements, layout.skeleton)

    def _layout(self, data: bytes, kind: Kinds) -> _Layout:
        """The blob's layout: a cached one whose skeleton matches, else a full walk.

        The walk's verdict depends only on the bytes outside the coefficient runs
        (it reads nothing inside them), so a blob whose skeleton equals one already
        accepted is well formed once its coefficients are checked: about 10x faster
        than walking it again.
        """
        key = (kind, len(data) if isinstance(data, bytes) else -1)
        for layout in self.layouts.get(key, ()):
            if layout.matches(data, self.ring_dimension):
                check_coefficients(coefficient_runs(data, layout.regions, self.ring_dimension),
                                   layout.summary.kind.value)
                return layout
        walk = Walker(self, data, kind)
        walk.run()
        walk.check_coefficients()
        layout = _Layout.of(walk)
        known = self.layouts.get(key)
        if known is None and len(self.layouts) < _LAYOUT_SHAPES:
            known = self.layouts[key] = []
        if known is not None and len(known) < _LAYOUTS_PER_SHAPE:
            known.append(layout)  # bounded: random key tags make each key its own layout
        return layout


_LAYOUTS_PER_SHAPE = 8
_LAYOUT_SHAPES = 64


@dataclass(frozen=True)
class _Layout:
    """An accepted blob's structure: where its coefficients lie and the bytes around them."""

    summary: BlobSummary
    regions: tuple[tuple[int, int], ...]  # (offset, modulus) of each coefficient run
    skeleton: tuple[bytes, ...]  # bytes before, between and after the runs

    @classmethod
    def of(cls, walk: Walker) -> _Layout:
        n, skeleton, cursor = walk.t.ring_dimension, [], 0
        for offset, _ in walk.regions:
            skeleton.append(walk.data[cursor:offset])
            cursor = offset + 8 * n
        skeleton.append(walk.data[cursor:])
        return cls(walk.summary(), tuple(walk.regions), tuple(skeleton))

    def matches(self, data: bytes, n: int) -> bool:
        cursor = 0
        for (offset, _), piece in zip(self.regions, self.skeleton, strict=False):
            if data[cursor:offset] != piece:
                return False
            cursor = offset + 8 * n
        return data[cursor:] == self.skeleton[-1]


@dataclass(frozen=True, eq=False)
class RingBlob:
    """A parsed blob: its summary, coefficients, and the bytes around them."""

    summary: BlobSummary
    elements: U64Array  # (elements, limbs, n), evaluation form
    skeleton: tuple[bytes, ...] = field(repr=False)  # bytes between coefficient runs

    @property
    def kind(self) -> BlobKind:
        return self.summary.kind

    def wipe(self) -> None:
        """Zero the coefficients (do this for secret keys and shares once used)."""
        self.elements.fill(0)


def build(blob: RingBlob, elements: U64Array | None = None) -> bytes:
    """The OpenFHE bytes of ``blob`` with ``elements`` as its coefficients.

    Without ``elements`` this gives back exactly the bytes parsed.  New coefficients
    must have the same shape and be below their limb's modulus.
    """
    values = blob.elements if elements is None else np.asarray(elements)
    if values.shape != blob.elements.shape or values.dtype != np.uint64:
        raise ParameterError(
            f"elements must be a uint64 array of shape {blob.elements.shape}, got "
            f"{values.dtype} {values.shape}"
        )
    for limb, modulus in enumerate(blob.summary.moduli):
        if bool((values[:, limb] >= np.uint64(modulus)).any()):
            raise ParameterError(f"a coefficient of limb {limb} is not below {modulus}")
    runs = [values[e, limb].astype("<u8", copy=False).tobytes()
            for e in range(values.shape[0]) for limb in range(values.shape[1])]
    pieces: list[bytes] = [blob.skeleton[0]]
    for run, glue in zip(runs, blob.skeleton[1:], strict=True):
        pieces += [run, glue]
    return b"".join(pieces)


# -- learning a template from real objects ---------------------------------------------
@dataclass(frozen=True)
class TemplateSamples:
    """Real objects of one context, serialised by OpenFHE (context.py makes them)."""

    ring_dimension: int
    slots: int
    modulus: float  # the context's whole modulus Q (OpenFHE reports a float)
    scale: Callable[[int], float] = field(repr=False)  # OpenFHE's scaling factor at a level
    key_tag: str  # the fresh key pair's tag
    secret_key: bytes  # fresh KeyGen secret key
    public_key: bytes  # its public key
    ciphertext: bytes  # a fresh encryption under it (level 0)
    resaved: dict[BlobKind, bytes] = field(repr=False)  # deserialised, serialised again


def learn_template(samples: TemplateSamples) -> RingTemplate:
    """Learn this context's blob layouts from a fresh key pair and ciphertext.

    Raises CryptoError if OpenFHE's bytes do not have the layout this module knows
    (another OpenFHE version): refusing everything beats trusting a guess.
    """
    blobs = {Outer.PRIVATE_KEY: samples.secret_key, Outer.PUBLIC_KEY: samples.public_key,
             Outer.CIPHERTEXT: samples.ciphertext}
    tag = samples.key_tag.encode()
    anchor = U64.pack(len(tag)) + tag
    headers = {outer: _header(blob, anchor) for outer, blob in blobs.items()}
    n = samples.ring_dimension
    moduli, towers, _ = _towers(headers[Outer.CIPHERTEXT], n)
    notes = {outer: _towers(header, n)[2] for outer, header in headers.items()}
    if not math.isclose(float(math.prod(moduli)), samples.modulus, rel_tol=1e-9):
        raise CryptoError(f"the {len(moduli)} towers found in OpenFHE's serialised context "
                          "do not multiply to the context's modulus")
    limbs = len(moduli)
    scales = {(level, degree): samples.scale(level) ** degree
              for level in range(limbs) for degree in range(1, limbs + 1)}
    template = RingTemplate(n, samples.slots, moduli, headers, towers, {}, 0, {}, scales, notes)
    learnt = _learn_ids(template, blobs)
    _validate(learnt, blobs, samples.resaved)
    return learnt


def _header(blob: bytes, anchor: bytes) -> bytes:
    position = blob.find(anchor)
    if position < 0 or blob.find(anchor, position + 1) >= 0:
        raise CryptoError("could not locate the key tag in OpenFHE's serialisation; "
                          "this OpenFHE version's layout is unknown to threshold_fl.crypto.ring")
    return blob[:position]


def _towers(header: bytes, n: int) -> tuple[tuple[int, ...], tuple[bytes, ...], HeaderNotes]:
    """Each RNS tower's parameter block, in order, as the header holds them, and where."""
    prefix = U32.pack(2 * n) + U32.pack(n)
    moduli: list[int] = []
    towers: list[bytes] = []
    notes: list[tuple[int, int, str]] = []
    position = header.find(prefix)
    while position >= 0:
        found = _tower_at(header, position + len(prefix), n)
        if found is not None:
            block, end = found
            notes.append((position, end, f"tower {len(moduli)} parameters: ring dimension, "
                          "modulus, 2n-th root of unity"))
            moduli.append(TOWER.unpack(block)[2])
            towers.append(block)
        position = header.find(prefix, position + 1)
    if not moduli:
        raise CryptoError("found no RNS towers in OpenFHE's serialised context")
    return tuple(moduli), tuple(towers), tuple(notes)


def _tower_at(header: bytes, start: int, n: int) -> tuple[bytes, int] | None:
    """The canonical tower block whose (2n, n) ends at ``start``, and its end, if any.

    The header's first tower carries NativeInteger's class version (u32) before its
    modulus; blocks in a blob body never do, so the canonical form leaves it out.
    A tower's modulus is an NTT-friendly prime (1 mod 2n) with its root below it;
    a DCRT block (a small word count there) or stray bytes fail this.
    """
    for skip in (0, 4):
        if start + skip + 32 > len(header) or (skip and U32.unpack_from(header, start)[0] > 16):
            continue
        modulus, root, big, big_root = struct.unpack_from("<QQQQ", header, start + skip)
        if modulus % (2 * n) == 1 and 1 < root < modulus and big == big_root == 0:
            return TOWER.pack(2 * n, n, modulus, root, 0, 0), start + skip + 32
    return None


def _learn_ids(template: RingTemplate, blobs: dict[Outer, bytes]) -> RingTemplate:
    """Pointer ids of the header's objects, class versions and trailer constants.

    A fresh private key refers to the header's towers and full DCRT parameters; a
    fresh ciphertext's metadata map is the first new object after the header.
    """
    objects: dict[int, Role] = {}
    for outer, kind in ((Outer.PRIVATE_KEY, BlobKind.SECRET_KEY),
                        (Outer.CIPHERTEXT, BlobKind.CIPHERTEXT)):
        walk = Walker(template, blobs[outer], kind, learning=True)
        walk.objects = dict(objects)
        try:
            walk.run()
        except FrameError as exc:
            raise CryptoError(f"OpenFHE's layout is unknown to threshold_fl.crypto.ring: "
                              f"{exc}") from None
        objects = walk.objects
    # The fresh ciphertext's first new object (its metadata map) follows the header's.
    if walk.first_new is None:
        raise CryptoError("OpenFHE's layout is unknown to threshold_fl.crypto.ring: "
                          "a fresh ciphertext wrote no metadata map")
    next_id = walk.first_new
    objects = {ident: role for ident, role in objects.items() if ident < next_id}
    return replace(template, objects=objects, next_id=next_id)


def _validate(template: RingTemplate, blobs: dict[Outer, bytes],
              resaved: dict[BlobKind, bytes]) -> None:
    cases = [(BlobKind.SECRET_KEY, blobs[Outer.PRIVATE_KEY]),
             (BlobKind.PUBLIC_KEY, blobs[Outer.PUBLIC_KEY]),
             (BlobKind.CIPHERTEXT, blobs[Outer.CIPHERTEXT]), *resaved.items()]
    for kind, blob in cases:
        try:
            template.check(blob, kind)
        except FrameError as exc:
            raise CryptoError(f"OpenFHE's layout is unknown to threshold_fl.crypto.ring: "
                              f"{exc}") from None
