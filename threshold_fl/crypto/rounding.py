"""How decryption shares and fused polynomials travel: in coefficient form, with the low
bits of every value dropped.

A share c1 * (lambda_j k_j) + e_j + M_j (+ P) carries flooding noise e_j of width about
2^31 in every coefficient, so its low bits are noise: rounding each coefficient to a
multiple of 2^b, with 2^(b-1) below an eighth of that width, changes the decrypted
result by a few tenths of a percent of its noise (``CkksParams.error_bound`` counts
it) and halves the bytes (60-bit values in 4 bytes).  The aggregator adds the rounded
shares to c0 in coefficient form and rounds the sum once more before broadcasting it.

Rounding must see the value itself, not its residues, so it applies to one-limb
aggregates only (``CkksParams.share_rounding_bits``; otherwise 0 bits, exact).  A value
x < q travels as y = round(x / 2^b) taken modulo L = ceil(q / 2^b), and comes back as
y 2^b mod q: off by at most 2^(b-1) modulo q, including when x is within 2^(b-1) of q
(then y = L wraps to 0, which is q modulo q).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from threshold_fl.arrays import U64Array
from threshold_fl.crypto import ntt
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.noise import reduce_mod, wipe
from threshold_fl.errors import FrameError, ParameterError

__all__ = ["ShareRounding"]


@dataclass(frozen=True)
class ShareRounding:
    """The aggregate's moduli and the low ``bits`` dropped from each coefficient of a
    share or a fused polynomial; ``width`` bytes a value on the wire."""

    moduli: tuple[int, ...]
    bits: int

    def __post_init__(self) -> None:
        if not self.moduli or (self.bits and len(self.moduli) != 1):
            raise ParameterError("share rounding needs one-limb aggregates (or 0 bits)")
        if not 0 <= self.bits < min(self.moduli).bit_length() - 1:
            raise ParameterError(f"cannot drop {self.bits} bits of moduli {self.moduli}")

    @classmethod
    def of(cls, context: CkksContext) -> ShareRounding:
        moduli = context.aggregate_moduli
        return cls(moduli, context.params.share_rounding_bits() if len(moduli) == 1 else 0)

    @property
    def width(self) -> int:
        return max((self.levels(q) - 1).bit_length() + 7 for q in self.moduli) // 8

    def levels(self, q: int) -> int:
        """L = ceil(q / 2^bits): rounded values lie in [0, L)."""
        return -(-q >> self.bits)

    # -- one limb --------------------------------------------------------------------------
    def round_into(self, values: U64Array, q: int) -> None:
        """values (coefficients below q) -> their rounded form, in place."""
        if self.bits:
            values += np.uint64(1 << (self.bits - 1))  # q < 2^62: no overflow
            values >>= np.uint64(self.bits)
            values[values == np.uint64(self.levels(q))] = 0

    def lift(self, rounded: U64Array, q: int) -> U64Array:
        """Rounded values -> coefficients below q (a new array)."""
        out = np.left_shift(rounded, np.uint64(self.bits))
        np.minimum(out, out - np.uint64(q), out=out)  # y < L: y 2^b < q + 2^b < 2q
        return out

    # -- whole arrays (count, limbs, n) ----------------------------------------------------
    def lifted(self, rounded: U64Array) -> U64Array:
        """Rounded polynomials (count, limbs, n) back below their moduli (a new array)."""
        out = np.empty_like(rounded)
        for limb, q in enumerate(self.moduli):
            out[:, limb] = self.lift(rounded[:, limb], q)
        return out

    def share(self, addend: U64Array, c1: U64Array, weighted_key: U64Array,
              noise: npt.NDArray[np.int64], q: int) -> U64Array:
        """One limb of a share, rounded: c1 * (lambda k) back in coefficients, plus the
        signed noise and the addend (masks and pad, coefficient form).  The compiled pass
        never leaves c1 * lambda k alone in memory; the numpy one wipes it."""
        tables = ntt.tables_for(c1.size, q)
        if ntt.backend() == "numba":
            shared: U64Array = np.empty(c1.size, dtype=np.uint64)
            ratio = (1 << 128) // q
            _nb_rounded_share(
                c1, weighted_key, noise, addend, shared, tables.psi_inv_rev,
                tables.psi_inv_rev_shoup, np.uint64(q), np.uint64(pow(c1.size, -1, q)),
                np.uint64((pow(c1.size, -1, q) << 64) // q), np.uint64(ratio & ((1 << 64) - 1)),
                np.uint64(ratio >> 64), np.uint64(self.bits), np.uint64(self.levels(q)))
            return shared
        product = ntt.mul_mod(c1, weighted_key, q)
        out = tables.inverse(product)
        wipe(product)
        flood = reduce_mod(noise, [q])[0]
        ntt.add_mod_into(out, flood, q)
        ntt.add_mod_into(out, addend, q)
        wipe(flood)
        self.round_into(out, q)
        return out

    def fuse(self, c0: U64Array, shares: Sequence[U64Array]) -> U64Array:
        """c0 (evaluation form) plus the rounded shares, rounded: (count, limbs, n)."""
        if not shares or any(share.shape != c0.shape for share in shares):
            raise ParameterError("blind fusion needs the set's shares, each shaped like c0")
        out = np.empty_like(c0)
        for index in range(c0.shape[0]):  # a ciphertext at a time: small temporaries
            for limb, q in enumerate(self.moduli):
                total = ntt.tables_for(c0.shape[2], q).inverse(c0[index, limb])
                for share in shares:
                    ntt.add_mod_into(total, self.lift(share[index, limb], q), q)
                self.round_into(total, q)
                out[index, limb] = total
        return out

    # -- bytes -----------------------------------------------------------------------------
    def to_bytes(self, rounded: U64Array) -> bytes:
        """One polynomial (limbs, n): ``width`` little-endian bytes a value."""
        words = np.ascontiguousarray(rounded, dtype="<u8").view(np.uint8).reshape(-1, 8)
        return words[:, : self.width].tobytes()

    def from_bytes(self, data: bytes, limbs: int, n: int, what: str) -> U64Array:
        """The (limbs, n) rounded values of ``to_bytes``, each checked below its L."""
        if len(data) != self.width * limbs * n:
            raise FrameError(f"a {what} polynomial of {len(data)} bytes, expected "
                             f"{self.width * limbs * n}")
        words = np.zeros((limbs * n, 8), dtype=np.uint8)
        words[:, : self.width] = np.frombuffer(data, dtype=np.uint8).reshape(-1, self.width)
        out = words.view("<u8").reshape(limbs, n).astype(np.uint64)
        for limb, q in enumerate(self.moduli[:limbs]):
            if out[limb].size and int(out[limb].max()) >= self.levels(q):
                raise FrameError(f"a {what} value is out of range for modulus {q} "
                                 "(tampered bytes or another version)")
        return out


@ntt._jit
def _nb_rounded_share(c1: U64Array, s: U64Array, noise: npt.NDArray[np.int64],
                      addend: U64Array, out: U64Array, psi_inv: U64Array,
                      psi_inv_shoup: U64Array, q: np.uint64, n_inv: np.uint64,
                      n_inv_shoup: np.uint64, r0: np.uint64, r1: np.uint64, bits: np.uint64,
                      levels: np.uint64) -> None:  # pragma: no cover - compiled
    for i in range(out.size):
        out[i] = ntt._nb_mul_barrett(c1[i], s[i], q, r0, r1)
    ntt._nb_inverse(out, psi_inv, psi_inv_shoup, q, n_inv, n_inv_shoup)
    modulus = np.int64(q)
    half = (np.uint64(1) << bits) >> np.uint64(1)
    for i in range(out.size):
        value = ntt._nb_reduce(out[i] + np.uint64(noise[i] % modulus), q)  # Python's %
        rounded = (ntt._nb_reduce(value + addend[i], q) + half) >> bits
        out[i] = np.uint64(0) if rounded == levels else rounded
