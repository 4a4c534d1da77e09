"""The grammar of OpenFHE BINARY blobs: a walker that checks every field.

Used by :mod:`threshold_fl.crypto.ring`, which learns the per-context template the
walker compares against.  Anything that is not exactly a layout this context
produces raises FrameError naming the field, its byte offset, and the expected and
found values.

Layout (cereal portable binary, as OpenFHE 1.6.1 writes it; see docs/crypto.md)::

    header     fixed bytes per object class: the serialised crypto context
               (moduli, 2n-th roots of unity, scheme); compared byte for byte
    key tag    u64 length (0 or 32) + lowercase hex
    count      u64 elements (ciphertexts: 2, decryption shares: 1; public keys: 2;
               a private key has no count: 1)
    element    [u32 class version, first DCRTPoly only] u64 limbs, then per limb:
                 [u32 version, first only] u32 0x40000000 u8 1 [u32 version, first only]
                 u64 n | n x u64 coefficients | u64 modulus | u32 format
                 | tower params pointer
               u32 format | DCRT params pointer
    trailer    (ciphertexts) u32 slots, u32 level, u32 hops, u32 noise degree,
               f64 scale, u64 integer scale, u32 encoding,
               u32 metadata-map pointer, u64 map size (0)

A pointer is u32 0x40000000 then u32 id: a reference to an object written earlier
(in the header or this blob), or ``id | 0x80000000`` for the next new object,
followed by its content.  Tower params content: u32 2n, u32 n, u64 modulus, u64
root of unity, u64 0, u64 0.  DCRT params content: u32 2n, u32 n, big integers
(u64 word count, words, u32 bit length) for the product of the towers' moduli and
three zeros, u64 tower count, tower pointers.  OpenFHE writes a pointer as a
reference or in full depending on how the object was made (fresh or
deserialised), so both are accepted, with the reference checked to name an object
of the right kind and tower.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from threshold_fl.arrays import U64Array
from threshold_fl.errors import FrameError, ParameterError

if TYPE_CHECKING:
    from threshold_fl.crypto.ring import RingTemplate

__all__ = ["BlobKind", "BlobSummary", "Kinds", "Outer", "Walker", "check_coefficients",
           "coefficient_runs"]

_EXACT_TYPE = 0x40000000  # cereal: a polymorphic pointer of exactly its static type
_NEW = 0x80000000  # cereal: first occurrence of a shared pointer, content follows
_EVALUATION = 0  # every blob that crosses the wire is in evaluation form
_TAG_LENGTHS = (0, 32)  # joint keys have no tag; others 128 random bits in hex
_HEX = frozenset(b"0123456789abcdef")
_MAX_BIGINT_WORDS = 64
# Scales of a ciphertext are OpenFHE's per-level scaling factor to the noise degree;
# automatic rescaling may round the last bits differently.
_SCALE_TOLERANCE = 1e-9
U32, U64, _F64 = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<d")
TOWER = struct.Struct("<IIQQQQ")


class Outer(Enum):
    CIPHERTEXT = "Ciphertext"
    PUBLIC_KEY = "PublicKey"
    PRIVATE_KEY = "PrivateKey"


class BlobKind(Enum):
    """What a blob must be; each kind crosses the wire in its own frames."""

    CIPHERTEXT = "ciphertext"
    DECRYPTION_SHARE = "decryption share"
    PUBLIC_KEY = "public key"
    SECRET_KEY = "secret key"


@dataclass(frozen=True)
class _Shape:
    outer: Outer
    elements: int
    all_limbs: bool  # keys live over the whole modulus


_SHAPES = {
    BlobKind.CIPHERTEXT: _Shape(Outer.CIPHERTEXT, 2, False),
    BlobKind.DECRYPTION_SHARE: _Shape(Outer.CIPHERTEXT, 1, False),
    BlobKind.PUBLIC_KEY: _Shape(Outer.PUBLIC_KEY, 2, True),
    BlobKind.SECRET_KEY: _Shape(Outer.PRIVATE_KEY, 1, True),
}

# A registered object: ("tower", index) or ("dcrt", limb count).
Role = tuple[str, int]
Kinds = BlobKind | tuple[BlobKind, ...]
HeaderNotes = tuple[tuple[int, int, str], ...]  # (start, end, what) of header byte ranges


@dataclass(frozen=True)
class BlobSummary:
    """The variable fields of a checked blob."""

    kind: BlobKind
    key_tag: str
    moduli: tuple[int, ...]  # each limb's modulus, in order
    elements: int
    level: int | None = None  # ciphertext kinds only
    noise_degree: int | None = None
    scaling_factor: float | None = None


class Walker:
    """One pass over one blob; every read is bounds-checked and every value compared."""

    def __init__(self, template: RingTemplate, data: bytes, kind: Kinds,
                 *, learning: bool = False, trace: bool = False) -> None:
        self.choices = kind if isinstance(kind, tuple) else (kind,)
        shapes = [_SHAPES[choice] for choice in self.choices]
        if len({shape.outer for shape in shapes}) != 1 or len(
            {shape.elements for shape in shapes}
        ) != len(shapes):
            raise ParameterError("alternative blob kinds must differ only in element count")
        self.t, self.data, self.kind, self.shape = template, data, self.choices[0], shapes[0]
        if not isinstance(data, bytes):
            raise FrameError(f"a {self.kind.value} blob must be bytes, got {type(data).__name__}")
        self.learning = learning
        self.pos = 0
        self.objects = dict(template.objects)
        self.next_id = template.next_id
        self.first_new: int | None = None
        self.seen: set[str] = set()  # classes whose version was written already
        self.regions: list[tuple[int, int]] = []  # (offset, modulus) of coefficient runs
        # (field, offset, size) of every read, for tests that edit one named field
        self.trace: list[tuple[str, int, int]] | None = [] if trace else None
        self.limbs = 0
        self.tag = ""
        self.trailer: dict[str, Any] = {}

    # -- reporting and reading ------------------------------------------------------
    def fail(self, what: str, expected: object, found: object, at: int | None = None) -> NoReturn:
        where = self.pos if at is None else at
        raise FrameError(
            f"malformed {self.kind.value}: {what} at byte {where}: expected {expected}, "
            f"found {found}; the sender's OpenFHE bytes are corrupt or forged, discard them"
        )

    def take(self, size: int, what: str) -> int:
        start = self.pos
        if size > len(self.data) - start:
            self.fail(f"{what} (truncated)", f"{size} more bytes",
                      f"{len(self.data) - start} left of {len(self.data)}")
        self.pos += size
        if self.trace is not None:
            self.trace.append((what, start, size))
        return start

    def u32(self, what: str) -> int:
        return int(U32.unpack_from(self.data, self.take(4, what))[0])

    def u64(self, what: str) -> int:
        return int(U64.unpack_from(self.data, self.take(8, what))[0])

    def expect(self, read: Callable[[str], int], what: str, expected: int) -> int:
        start = self.pos
        value = read(what)
        if value != expected:
            self.fail(what, expected, value, start)
        return value

    def constant(self, read: Callable[[str], int], what: str) -> None:
        """A field that is the same in every blob of this context (learnt)."""
        if self.learning and what not in self.t.constants:
            self.t.constants[what] = read(what)
        else:
            self.expect(read, what, self.t.constants[what])

    def version(self, cls: str) -> None:
        # cereal writes a class's version only the first time the class occurs.
        if cls not in self.seen:
            self.seen.add(cls)
            self.constant(self.u32, f"{cls} class version")

    # -- grammar --------------------------------------------------------------------
    def run(self) -> None:
        header = self.t.headers[self.shape.outer]
        start = self.take(len(header), "header")
        if self.data[start:self.pos] != header:
            self.header_mismatch(header, start)
        self.key_tag()
        count = self.shape.elements
        if self.shape.outer is not Outer.PRIVATE_KEY:
            count = self.element_count()
        for element in range(count):
            self.dcrt_poly(element)
        if self.shape.outer is Outer.CIPHERTEXT:
            self.ciphertext_trailer()
        if self.pos != len(self.data):
            self.fail("end of blob", "no more bytes", f"{len(self.data) - self.pos} trailing bytes")

    def header_mismatch(self, header: bytes, start: int) -> NoReturn:
        found = self.data[start:start + len(header)]
        at = next(i for i, (a, b) in enumerate(zip(header, found, strict=True)) if a != b)
        part = next((what for low, high, what in self.t.header_notes[self.shape.outer]
                     if low <= at < high), "crypto context parameters and scheme")
        self.fail(f"header byte ({part})", f"{header[at]:#04x}", f"{found[at]:#04x}",
                  start + at)

    def element_count(self) -> int:
        start = self.pos
        count = self.u64("element count")
        for choice in self.choices:
            if _SHAPES[choice].elements == count:
                self.kind, self.shape = choice, _SHAPES[choice]
                return count
        expected = " or ".join(str(_SHAPES[choice].elements) for choice in self.choices)
        self.fail("element count", expected, count, start)

    def key_tag(self) -> None:
        start = self.pos
        length = self.u64("key tag length")
        if length not in _TAG_LENGTHS:
            self.fail("key tag length", " or ".join(map(str, _TAG_LENGTHS)), length, start)
        raw = self.data[self.take(length, "key tag"):self.pos]
        if not set(raw) <= _HEX:
            self.fail("key tag", "lowercase hex", repr(raw[:40]), start + 8)
        self.tag = raw.decode()

    def dcrt_poly(self, element: int) -> None:
        self.version("DCRTPoly")
        start = self.pos
        limbs = self.u64(f"element {element} limb count")
        low, high = (self.t.limbs, self.t.limbs) if self.shape.all_limbs else (1, self.t.limbs)
        if element and limbs != self.limbs:
            self.fail(f"element {element} limb count", f"{self.limbs} (as element 0)", limbs, start)
        if not low <= limbs <= high:
            self.fail(f"element {element} limb count", f"{low}..{high}", limbs, start)
        self.limbs = limbs
        for limb in range(limbs):
            self.native_poly(element, limb)
        self.expect(self.u32, f"element {element} format", _EVALUATION)
        self.pointer("dcrt", limbs, f"element {element} ring parameters")

    def native_poly(self, element: int, limb: int) -> None:
        name = f"element {element} limb {limb}"
        self.version("NativePoly")
        self.expect(self.u32, f"{name} pointer type", _EXACT_TYPE)
        self.expect(lambda w: self.data[self.take(1, w)], f"{name} presence flag", 1)
        self.version("NativeVector")
        self.expect(self.u64, f"{name} ring dimension n", self.t.ring_dimension)
        offset = self.take(8 * self.t.ring_dimension, f"{name} coefficients")
        modulus = self.expect(self.u64, f"{name} modulus", self.t.moduli[limb])
        self.regions.append((offset, modulus))
        self.expect(self.u32, f"{name} format", _EVALUATION)
        self.pointer("tower", limb, f"{name} tower parameters")

    def pointer(self, role: str, index: int, what: str) -> None:
        self.expect(self.u32, f"{what} pointer type", _EXACT_TYPE)
        start = self.pos
        ident = self.u32(f"{what} pointer id")
        if ident & _NEW:
            self.new_object(ident & ~_NEW, (role, index), what, start)
            if role == "tower":
                self.tower_content(index, what)
            else:
                self.dcrt_content(index, what)
            return
        known = self.objects.get(ident)
        if known is None and self.learning:
            self.objects[ident] = known = (role, index)
        if known != (role, index):
            self.fail(f"{what} pointer id {ident}", f"an id of {role} {index}",
                      "an unknown id" if known is None else f"{known[0]} {known[1]}", start)

    def new_object(self, ident: int, role: Role, what: str, at: int) -> None:
        if self.learning and self.first_new is None:
            self.first_new = self.next_id = ident
        if ident != self.next_id:
            self.fail(f"{what} new pointer id", self.next_id, ident, at)
        self.objects[ident] = role
        self.next_id += 1

    def tower_content(self, index: int, what: str) -> None:
        start = self.take(TOWER.size, f"{what} content")
        expected = self.t.towers[index]
        found = self.data[start:self.pos]
        if found != expected:
            names = ("cyclotomic order", "ring dimension", "modulus", "root of unity",
                     "big modulus", "big root of unity")
            pairs = zip(names, TOWER.unpack(expected), TOWER.unpack(found), strict=True)
            name, want, got = next(p for p in pairs if p[1] != p[2])
            self.fail(f"{what}: {name}", want, got, start)

    def dcrt_content(self, limbs: int, what: str) -> None:
        n = self.t.ring_dimension
        expected = _dcrt_content(n, self.t.moduli[:limbs])
        if self.data[self.pos:self.pos + len(expected)] == expected:
            self.take(len(expected), f"{what} content")  # the common case, one comparison
        else:
            self.dcrt_fields(limbs, what)  # to name the field that differs
        for tower in range(limbs):
            self.pointer("tower", tower, f"{what} tower {tower}")

    def dcrt_fields(self, limbs: int, what: str) -> None:
        n = self.t.ring_dimension
        self.expect(self.u32, f"{what} cyclotomic order", 2 * n)
        self.expect(self.u32, f"{what} ring dimension", n)
        self.big_integer(f"{what} modulus", math.prod(self.t.moduli[:limbs]))
        for name in ("root of unity", "big modulus", "big root of unity"):
            self.big_integer(f"{what} {name}", 0)
        self.expect(self.u64, f"{what} tower count", limbs)

    def big_integer(self, what: str, expected: int) -> None:
        start = self.pos
        words = self.u64(f"{what} word count")
        if not 1 <= words <= _MAX_BIGINT_WORDS:
            self.fail(f"{what} word count", f"1..{_MAX_BIGINT_WORDS}", words, start)
        raw = self.data[self.take(8 * words, what):self.pos]
        msb = self.u32(f"{what} bit length")
        if self.data[start:self.pos] != big_integer(expected):
            value = int.from_bytes(raw, "little")
            self.fail(what, f"{expected} ({expected.bit_length()} bits)",
                      f"{value} ({msb} bits declared)", start)

    def ciphertext_trailer(self) -> None:
        self.expect(self.u32, "slots", self.t.slots)
        level = self.expect(self.u32, "level", self.t.limbs - self.limbs)
        self.expect(self.u32, "re-encryption hops", 0)
        start = self.pos
        degree = self.u32("noise scale degree")
        if not 1 <= degree <= self.t.limbs:
            self.fail("noise scale degree", f"1..{self.t.limbs}", degree, start)
        self.scale(level, degree)
        self.constant(self.u64, "integer scaling factor")
        self.constant(self.u32, "encoding type")
        start = self.pos
        ident = self.u32("metadata map pointer")
        if not ident & _NEW:
            self.fail("metadata map pointer", "a new object", f"a reference to {ident}", start)
        self.new_object(ident & ~_NEW, ("map", 0), "metadata map pointer", start)
        self.expect(self.u64, "metadata map size", 0)
        self.trailer = {"level": level, "noise_degree": degree}

    def scale(self, level: int, degree: int) -> None:
        start = self.take(8, "scaling factor")
        value = float(_F64.unpack_from(self.data, start)[0])
        expected = self.t.scales[(level, degree)]
        if not math.isclose(value, expected, rel_tol=_SCALE_TOLERANCE):
            self.fail(f"scaling factor at level {level}, degree {degree}", expected, value, start)
        self.trailer["scaling_factor"] = value

    # -- results ------------------------------------------------------------------------
    def check_coefficients(self) -> None:
        """Every coefficient below its limb's modulus: one numpy reduction per limb."""
        check_coefficients(coefficient_runs(self.data, self.regions, self.t.ring_dimension),
                           self.kind.value)

    def summary(self) -> BlobSummary:
        return BlobSummary(
            self.kind, self.tag, tuple(m for _, m in self.regions[: self.limbs]),
            len(self.regions) // max(self.limbs, 1),
            self.trailer.get("level"), self.trailer.get("noise_degree"),
            self.trailer.get("scaling_factor"),
        )


def check_coefficients(runs: Iterable[tuple[U64Array, int, int]], what: str) -> None:
    """Raise FrameError unless every run of coefficients lies below its modulus: one
    numpy reduction per run.  A run is (its values, 1-D; its modulus; the byte offset of
    its first value in the bytes the message names), for OpenFHE blobs and our frames."""
    for values, modulus, offset in runs:
        if values.size and int(values.max()) >= modulus:
            index = int(np.argmax(values >= np.uint64(modulus)))
            raise FrameError(
                f"malformed {what}: coefficient (not below its modulus) at byte "
                f"{offset + 8 * index}: expected < {modulus}, found {int(values[index])}; the "
                "sender's bytes are corrupt or forged, discard them"
            )


def coefficient_runs(data: bytes, regions: Sequence[tuple[int, int]], n: int
                     ) -> Iterator[tuple[U64Array, int, int]]:
    """A blob's coefficient runs, from its (offset, modulus) regions, to check."""
    for offset, modulus in regions:
        yield np.frombuffer(data, dtype="<u8", count=n, offset=offset), modulus, offset


@lru_cache(maxsize=64)
def _dcrt_content(n: int, moduli: tuple[int, ...]) -> bytes:
    """A DCRT params block up to its tower pointers, as OpenFHE writes it."""
    head = U32.pack(2 * n) + U32.pack(n) + big_integer(math.prod(moduli))
    return head + 3 * big_integer(0) + U64.pack(len(moduli))


def _big_words(value: int) -> int:
    return max(1, (value.bit_length() + 63) // 64)


def big_integer(value: int) -> bytes:
    """OpenFHE's encoding of a big integer: word count, 64-bit words, bit length."""
    words = _big_words(value)
    return U64.pack(words) + value.to_bytes(8 * words, "little") + U32.pack(value.bit_length())
