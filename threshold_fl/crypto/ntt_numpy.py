"""The numpy implementation of the NTT arithmetic of :mod:`threshold_fl.crypto.ntt`:
the fallback when numba is missing or fails, and the reference the numba kernels are
compared with at start-up.

Every intermediate array is named and registered with a :class:`_Scratch`, which zeroes
them all when the computation ends: the operands may be secret (key limbs, noise), and
a freed numpy buffer keeps its bytes.  Results are the caller's and are not wiped.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from threshold_fl.arrays import U64Array

# uint64 everywhere: mixing uint64 with int64 silently promotes to float64.
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
_A = TypeVar("_A", bound=npt.NDArray[Any])


class Scratch:
    """The temporaries of one numpy computation, zeroed on exit (see above)."""

    def __init__(self) -> None:
        self.arrays: list[npt.NDArray[Any]] = []

    def __call__(self, array: _A) -> _A:
        self.arrays.append(array)
        return array

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        for array in self.arrays:
            array.fill(0)
        self.arrays.clear()


def mulhi(a: U64Array, b: U64Array, s: Scratch) -> U64Array:
    a_lo, a_hi = s(a & MASK32), s(a >> SHIFT32)
    b_lo, b_hi = s(b & MASK32), s(b >> SHIFT32)
    hi_lo = s(a_hi * b_lo)
    cross = s(a_lo * b_lo)
    cross >>= SHIFT32
    cross += s(hi_lo & MASK32)
    cross += s(a_lo * b_hi)
    cross >>= SHIFT32
    result: U64Array = hi_lo >> SHIFT32
    result += cross
    result += s(a_hi * b_hi)
    return result


def reduce_once_into(r: U64Array, q: np.uint64, s: Scratch) -> None:
    # Below 2q -> below q in place: below q, r - q wraps above r, so the minimum is right.
    np.minimum(r, s(r - q), out=r)


def mul_shoup(x: U64Array, w: U64Array, w_shoup: U64Array, q: np.uint64,
                  s: Scratch) -> U64Array:
    out: U64Array = x * w
    out -= s(s(mulhi(x, w_shoup, s)) * q)
    reduce_once_into(out, q, s)
    return out


def mul_barrett(
    a: U64Array, b: U64Array, q: np.uint64, r0: np.uint64, r1: np.uint64, s: Scratch
) -> U64Array:
    lo, hi = s(a * b), s(mulhi(a, b, s))
    t2lo = s(lo * r1)
    t1 = s(t2lo + s(mulhi(lo, s(np.full_like(lo, r0)), s)))
    t3 = s(mulhi(lo, s(np.full_like(lo, r1)), s))
    t3 += s(s(t1 < t2lo).astype(np.uint64))
    low_sum = s(t1 + s(hi * r0))
    carry = s(mulhi(hi, s(np.full_like(hi, r0)), s))
    carry += s(s(low_sum < t1).astype(np.uint64))
    quotient = s(hi * r1)
    quotient += t3
    quotient += carry
    quotient *= q
    out: U64Array = lo - quotient
    reduce_once_into(out, q, s)
    reduce_once_into(out, q, s)
    return out


def add(u: U64Array, v: U64Array, q: np.uint64, s: Scratch) -> U64Array:
    out: U64Array = u + v
    reduce_once_into(out, q, s)
    return out


def sub(u: U64Array, v: U64Array, q: np.uint64, s: Scratch) -> U64Array:
    out: U64Array = q - v  # in (0, q]
    out += u  # u + q - v in (0, 2q)
    reduce_once_into(out, q, s)
    return out


def forward(a: U64Array, psi: U64Array, psi_shoup: U64Array, q: np.uint64) -> None:
    # One vectorised stage at a time: blocks of 2t, each with its own twiddle.
    n = a.shape[0]
    m, t = 1, n
    while m < n:
        t >>= 1
        blocks = a.reshape(m, 2, t)
        w = psi[m : 2 * m, None]
        ws = psi_shoup[m : 2 * m, None]
        with Scratch() as s:
            u = s(blocks[:, 0, :].copy())
            v = s(mul_shoup(blocks[:, 1, :], w, ws, q, s))
            blocks[:, 0, :] = s(add(u, v, q, s))
            blocks[:, 1, :] = s(sub(u, v, q, s))
        m <<= 1


def inverse(
    a: U64Array,
    psi_inv: U64Array,
    psi_inv_shoup: U64Array,
    q: np.uint64,
    n_inv: np.uint64,
    n_inv_shoup: np.uint64,
) -> None:
    n = a.shape[0]
    m, t = n >> 1, 1
    while m >= 1:
        blocks = a.reshape(m, 2, t)
        w = psi_inv[m : 2 * m, None]
        ws = psi_inv_shoup[m : 2 * m, None]
        with Scratch() as s:
            u, v = s(blocks[:, 0, :].copy()), s(blocks[:, 1, :].copy())
            blocks[:, 0, :] = s(add(u, v, q, s))
            blocks[:, 1, :] = s(mul_shoup(s(sub(u, v, q, s)), w, ws, q, s))
        t <<= 1
        m >>= 1
    with Scratch() as s:
        a[:] = s(mul_shoup(a, s(np.full_like(a, n_inv)), s(np.full_like(a, n_inv_shoup)),
                               q, s))
