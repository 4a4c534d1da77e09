"""Negacyclic NTT and modular arithmetic per RNS limb, matching OpenFHE exactly.

OpenFHE keeps ciphertexts, secret keys and decryption shares in *evaluation*
form: each RNS limb is the negacyclic NTT of the coefficient polynomial modulo
a prime q = 1 (mod 2n).  To compute a decryption share ourselves we must use
the very same transform, so this module reproduces OpenFHE's conventions:

* the root is the **smallest** primitive 2n-th root of unity psi mod q
  (OpenFHE's ``RootOfUnity``; it is also what the context header stores);
* the forward transform is Cooley-Tukey with the powers of psi in bit-reversed
  order (``table[bitrev(i)] = psi^i``), taking coefficients in natural order
  to evaluations in bit-reversed order: slot i holds a(psi^(2 bitrev(i) + 1));
* the inverse is Gentleman-Sande with the powers of psi^-1, then times n^-1.

Both are exact linear maps mod q, so any correct implementation with the same
root and ordering gives bit-identical limbs.  Products of two values below
q < 2^62 need 128 bits: numba has no 128-bit integer, so the kernels split
64-bit words into 32-bit halves (``mulhi``), use Shoup's precomputed quotients
for fixed operands (twiddles, a secret key) and a 128-bit Barrett reduction
otherwise.  The kernels are compiled with numba when it imports and compiles;
otherwise a pure-numpy implementation of the same arithmetic is used (slower,
bit-identical).  ``THRESHOLD_FL_NTT_BACKEND=numpy`` forces the fallback.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from threshold_fl.arrays import U64Array
from threshold_fl.crypto import ntt_numpy as numpy_kernels
from threshold_fl.errors import ParameterError

__all__ = [
    "MAX_MODULUS_BITS",
    "NttTables",
    "add_mod",
    "add_mod_into",
    "backend",
    "mul_mod",
    "mul_mod_shoup",
    "root_of_unity",
    "shoup_precompute",
    "sub_mod",
    "sub_mod_into",
    "tables_for",
]

#: Moduli must be below 2^62: the lazy butterflies keep values below 4q and the
#: Barrett reduction below 3q, which must fit in a 64-bit word.
MAX_MODULUS_BITS = 62
_BACKEND_ENV = "THRESHOLD_FL_NTT_BACKEND"
_M64 = (1 << 64) - 1

# numba freezes globals as typed constants; every constant in a kernel must be
# uint64, since mixing uint64 with int64 silently promotes to float64.
_MASK32 = numpy_kernels.MASK32
_SHIFT32 = numpy_kernels.SHIFT32
_ONE = np.uint64(1)
_ZERO = np.uint64(0)


# -- numba loading and its cache -------------------------------------------------
def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def _configure_numba_cache() -> bool:
    """Point numba's cache at a writable per-user directory, before numba is imported.

    Returns whether kernels may be cached.  Numba's default caches next to the source
    file, which fails in a read-only checkout or site-packages, so without a
    writable NUMBA_CACHE_DIR (the user's, or $XDG_CACHE_HOME/threshold-fl/numba,
    else ~/.cache/threshold-fl/numba) nothing is cached: compiled at each start.
    """
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return _writable_dir(Path(configured))
    if "numba" in sys.modules:
        return True  # too late to configure: numba finds its own place, or _jit drops caching
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "threshold-fl" / "numba"
    if not _writable_dir(path):
        return False
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    return True


def _load_numba() -> tuple[Any, bool]:
    if os.environ.get(_BACKEND_ENV, "").strip().lower() == "numpy":
        return None, False
    cache = _configure_numba_cache()
    try:
        return importlib.import_module("numba"), cache
    except Exception:  # ImportError, or a numba/llvmlite that fails to load
        return None, False


_numba, _CACHE = _load_numba()


def _jit(func: Callable[..., Any]) -> Any:
    """numba.njit, cached when a cache directory is usable.

    Without numba the plain function is returned (and never used as a kernel).
    """
    if _numba is None:
        return func
    try:
        return _numba.njit(cache=_CACHE, nogil=True)(func)
    except Exception:  # numba refuses caching when it finds no writable locator
        return _numba.njit(cache=False, nogil=True)(func)


# -- numba kernels (scalar helpers, then loops) ------------------------------------
@_jit
def _nb_mulhi(a: np.uint64, b: np.uint64) -> np.uint64:
    # High word of the 128-bit product from four 32x32-bit products; no term overflows.
    a_lo = a & _MASK32
    a_hi = a >> _SHIFT32
    b_lo = b & _MASK32
    b_hi = b >> _SHIFT32
    lo_lo = a_lo * b_lo
    hi_lo = a_hi * b_lo
    cross = (lo_lo >> _SHIFT32) + (hi_lo & _MASK32) + a_lo * b_hi
    return (hi_lo >> _SHIFT32) + (cross >> _SHIFT32) + a_hi * b_hi


@_jit
def _nb_mul_shoup_lazy(x: np.uint64, w: np.uint64, w_shoup: np.uint64, q: np.uint64) -> Any:
    # Shoup: with w_shoup = floor(w 2^64 / q) the quotient estimate is short by at most
    # one, so the result is in [0, 2q) for any 64-bit x.
    return x * w - _nb_mulhi(x, w_shoup) * q


@_jit
def _nb_reduce(x: np.uint64, q: np.uint64) -> np.uint64:
    # x - q if x >= q, else x, without a branch: when x < q, x - q wraps above x.
    return min(x, x - q)


@_jit
def _nb_mul_shoup(x: np.uint64, w: np.uint64, w_shoup: np.uint64, q: np.uint64) -> Any:
    return _nb_reduce(_nb_mul_shoup_lazy(x, w, w_shoup, q), q)


@_jit
def _nb_mul_barrett(a: np.uint64, b: np.uint64, q: np.uint64, r0: np.uint64, r1: np.uint64) -> Any:
    # 128-bit Barrett reduction of a*b with (r1, r0) = floor(2^128 / q), as in SEAL.
    lo = a * b
    hi = _nb_mulhi(a, b)
    t2lo = lo * r1
    t1 = t2lo + _nb_mulhi(lo, r0)
    t3 = _nb_mulhi(lo, r1) + (_ONE if t1 < t2lo else _ZERO)
    s = t1 + hi * r0
    carry = _nb_mulhi(hi, r0) + (_ONE if s < t1 else _ZERO)
    r = lo - (hi * r1 + t3 + carry) * q
    # The estimate may be short by up to two multiples of q (r < 3q < 2^64).
    return _nb_reduce(_nb_reduce(r, q), q)


@_jit
def _nb_forward(a: U64Array, psi: U64Array, psi_shoup: U64Array, q: np.uint64) -> None:
    # Harvey's lazy butterflies: values stay in [0, 4q) (q < 2^62) and are reduced once
    # at the end; data-dependent branches on random limbs cost more than the arithmetic.
    n = a.shape[0]
    two_q = q + q
    m = 1
    t = n
    while m < n:
        t >>= 1
        for i in range(m):
            w = psi[m + i]
            ws = psi_shoup[m + i]
            start = 2 * i * t
            for j in range(start, start + t):
                u = _nb_reduce(a[j], two_q)
                v = _nb_mul_shoup_lazy(a[j + t], w, ws, q)
                a[j] = u + v
                a[j + t] = u + two_q - v
        m <<= 1
    for j in range(n):
        a[j] = _nb_reduce(_nb_reduce(a[j], two_q), q)


@_jit
def _nb_inverse(
    a: U64Array,
    psi_inv: U64Array,
    psi_inv_shoup: U64Array,
    q: np.uint64,
    n_inv: np.uint64,
    n_inv_shoup: np.uint64,
) -> None:
    # Lazy Gentleman-Sande: values stay in [0, 2q) until the final scaling by 1/n.
    n = a.shape[0]
    two_q = q + q
    m = n >> 1
    t = 1
    while m >= 1:
        for i in range(m):
            w = psi_inv[m + i]
            ws = psi_inv_shoup[m + i]
            start = 2 * i * t
            for j in range(start, start + t):
                u = a[j]
                v = a[j + t]
                a[j] = _nb_reduce(u + v, two_q)
                a[j + t] = _nb_mul_shoup_lazy(u + two_q - v, w, ws, q)
        t <<= 1
        m >>= 1
    for j in range(n):
        a[j] = _nb_mul_shoup(a[j], n_inv, n_inv_shoup, q)


@_jit
def _nb_mul_mod(
    a: U64Array, b: U64Array, out: U64Array, q: np.uint64, r0: np.uint64, r1: np.uint64
) -> None:
    for j in range(a.shape[0]):
        out[j] = _nb_mul_barrett(a[j], b[j], q, r0, r1)


@_jit
def _nb_mul_mod_shoup(
    a: U64Array, w: U64Array, w_shoup: U64Array, out: U64Array, q: np.uint64
) -> None:
    for j in range(a.shape[0]):
        out[j] = _nb_mul_shoup(a[j], w[j], w_shoup[j], q)


# -- backend selection ---------------------------------------------------------------
_backend: str | None = None


def backend() -> str:
    """``"numba"`` or ``"numpy"``: which implementation the public functions use.

    Decided on first use: numba is chosen if it imports, compiles the kernels and
    reproduces the numpy result on a small transform; otherwise numpy, with a warning.
    """
    global _backend
    if _backend is None:
        _backend = _probe_numba()
    return _backend


def _probe_numba() -> str:
    if _numba is None:
        return "numpy"
    try:
        _compare_backends()
    except Exception as exc:  # a numba that fails to compile: use numpy
        warnings.warn(
            f"numba could not compile the NTT kernels ({exc}); using the slower numpy path",
            RuntimeWarning,
            stacklevel=3,
        )
        return "numpy"
    return "numba"


def _compare_backends() -> None:
    # Compiles every kernel (or fails) and checks it against numpy on a tiny case.
    q = 12289  # 1 (mod 32): a classic NTT prime
    tables = NttTables(16, q)
    a = np.arange(16, dtype=np.uint64) * np.uint64(769) % np.uint64(q)
    b = a[::-1].copy()
    b_shoup = shoup_precompute(b, q)
    fast, slow = (
        [
            tables.forward(a, backend=name),
            tables.inverse(a, backend=name),
            mul_mod(a, b, q, backend=name),
            mul_mod_shoup(a, b, b_shoup, q, backend=name),
        ]
        for name in ("numba", "numpy")
    )
    if not all(np.array_equal(x, y) for x, y in zip(fast, slow, strict=True)):
        raise RuntimeError("numba and numpy kernels disagree")


def _use_numba(name: str | None) -> bool:
    chosen = backend() if name is None else name
    if chosen not in ("numba", "numpy"):
        raise ParameterError(f"backend must be 'numba' or 'numpy', got {chosen!r}")
    if chosen == "numba" and _numba is None:
        raise ParameterError("the numba backend was requested but numba is not available")
    return chosen == "numba"


# -- roots of unity and tables -------------------------------------------------------
def _check_modulus(q: int, n: int) -> None:
    if n < 2 or n & (n - 1):
        raise ParameterError(f"the ring dimension must be a power of two >= 2, got {n}")
    if not 2 < q < 1 << MAX_MODULUS_BITS or (q - 1) % (2 * n):
        raise ParameterError(
            f"modulus {q} must be below 2^{MAX_MODULUS_BITS} and 1 mod 2n (n={n}) "
            "for a negacyclic NTT"
        )


@lru_cache(maxsize=64)
def root_of_unity(m: int, q: int) -> int:
    """The smallest primitive ``m``-th root of unity mod prime ``q`` (m a power of two).

    This is OpenFHE's rule (``RootOfUnity`` takes the minimum over all primitive
    roots so that every context agrees), so the NTT matches OpenFHE's limbs.
    """
    if m < 2 or m & (m - 1) or (q - 1) % m:
        raise ParameterError(f"no primitive {m}-th root of unity mod {q}")
    # For m a power of two, x is primitive iff x^(m/2) = -1; no factoring of q-1 needed.
    # For a prime q half of all g qualify, so a few candidates always suffice.
    for g in range(2, min(q, 1000)):
        root = pow(g, (q - 1) // m, q)
        if pow(root, m // 2, q) == q - 1:
            break
    else:
        raise ParameterError(f"found no primitive {m}-th root of unity mod {q} (not a prime?)")
    # The primitive roots are root^k for odd k; step by root^2 and keep the smallest.
    step, best, current = root * root % q, root, root
    for _ in range(m // 2 - 1):
        current = current * step % q
        best = min(best, current)
    return best


def shoup_precompute(values: U64Array, q: int) -> U64Array:
    """floor(w 2^64 / q) for each w < q: the precomputed quotient for ``mul_mod_shoup``.

    Worth it for an operand used many times (a secret key limb, twiddles).
    """
    _check_operand(values, q, "values")
    return np.array([(int(w) << 64) // q for w in values.tolist()], dtype=np.uint64)


def _bit_reverse(i: int, bits: int) -> int:
    return int(format(i, f"0{bits}b")[::-1], 2) if bits else 0


class NttTables:
    """Twiddle tables for the negacyclic NTT of length ``n`` modulo ``q`` (OpenFHE's order).

    Build once per (n, q) (``tables_for`` caches them); ``root`` defaults to
    OpenFHE's choice, the smallest primitive 2n-th root of unity.
    """

    def __init__(self, n: int, q: int, root: int | None = None) -> None:
        _check_modulus(q, n)
        psi = root_of_unity(2 * n, q) if root is None else root
        if pow(psi, n, q) != q - 1:
            raise ParameterError(f"{psi} is not a primitive {2 * n}-th root of unity mod {q}")
        self.n, self.q, self.root = n, q, psi
        self._q = np.uint64(q)
        bits = n.bit_length() - 1
        self.psi_rev = _powers_bit_reversed(psi, n, q, bits)
        self.psi_inv_rev = _powers_bit_reversed(pow(psi, -1, q), n, q, bits)
        self.psi_rev_shoup = shoup_precompute(self.psi_rev, q)
        self.psi_inv_rev_shoup = shoup_precompute(self.psi_inv_rev, q)
        n_inv = pow(n, -1, q)
        self._n_inv = np.uint64(n_inv)
        self._n_inv_shoup = np.uint64((n_inv << 64) // q)

    def forward(self, coefficients: U64Array, *, backend: str | None = None) -> U64Array:
        """Coefficients (natural order, each < q) -> OpenFHE evaluation form (new array)."""
        out = self._checked_copy(coefficients)
        if _use_numba(backend):
            _nb_forward(out, self.psi_rev, self.psi_rev_shoup, self._q)
        else:
            numpy_kernels.forward(out, self.psi_rev, self.psi_rev_shoup, self._q)
        return out

    def inverse(self, evaluations: U64Array, *, backend: str | None = None) -> U64Array:
        """OpenFHE evaluation form -> coefficients in natural order (new array)."""
        out = self._checked_copy(evaluations)
        args = (self.psi_inv_rev, self.psi_inv_rev_shoup, self._q, self._n_inv, self._n_inv_shoup)
        if _use_numba(backend):
            _nb_inverse(out, *args)
        else:
            numpy_kernels.inverse(out, *args)
        return out

    def _checked_copy(self, values: U64Array) -> U64Array:
        if values.shape != (self.n,):
            raise ParameterError(f"expected {self.n} values, got an array of shape {values.shape}")
        _check_operand(values, self.q, "values")
        return np.array(values, dtype=np.uint64, copy=True)


def _powers_bit_reversed(base: int, n: int, q: int, bits: int) -> U64Array:
    table = [0] * n
    power = 1
    for i in range(n):
        table[_bit_reverse(i, bits)] = power
        power = power * base % q
    return np.array(table, dtype=np.uint64)


@lru_cache(maxsize=64)
def tables_for(n: int, q: int) -> NttTables:
    """The (cached) tables for ring dimension ``n`` and modulus ``q``, OpenFHE's root."""
    return NttTables(n, q)


# -- element-wise modular arithmetic ----------------------------------------------------
def _check_operand(values: npt.NDArray[Any], q: int, name: str) -> None:
    if values.dtype != np.uint64:
        raise ParameterError(f"{name} must be a uint64 array, got {values.dtype}")
    if values.size and int(values.max()) >= q:
        raise ParameterError(f"{name} must be reduced modulo q={q}")


def _check_pair(a: U64Array, b: U64Array, q: int) -> None:
    _check_modulus_only(q)
    if a.shape != b.shape or a.ndim != 1:
        raise ParameterError(f"operands must be 1-D of one shape, got {a.shape} and {b.shape}")
    _check_operand(a, q, "a")
    _check_operand(b, q, "b")


def _check_modulus_only(q: int) -> None:
    if not 2 < q < 1 << MAX_MODULUS_BITS:
        raise ParameterError(f"modulus {q} must be in (2, 2^{MAX_MODULUS_BITS})")


def mul_mod(a: U64Array, b: U64Array, q: int, *, backend: str | None = None) -> U64Array:
    """a * b mod q element-wise (a, b < q < 2^62), via a 128-bit Barrett reduction."""
    _check_pair(a, b, q)
    ratio = (1 << 128) // q
    r0, r1, qq = np.uint64(ratio & _M64), np.uint64(ratio >> 64), np.uint64(q)
    if _use_numba(backend):
        out = np.empty_like(a)
        _nb_mul_mod(a, b, out, qq, r0, r1)
        return out
    with numpy_kernels.Scratch() as s:
        return numpy_kernels.mul_barrett(a, b, qq, r0, r1, s)


def mul_mod_shoup(
    a: U64Array, w: U64Array, w_shoup: U64Array, q: int, *, backend: str | None = None
) -> U64Array:
    """a * w mod q element-wise with ``w_shoup = shoup_precompute(w, q)`` (about 3x faster)."""
    _check_pair(a, w, q)
    if w_shoup.shape != w.shape or w_shoup.dtype != np.uint64:
        raise ParameterError("w_shoup must be shoup_precompute(w, q)")
    qq = np.uint64(q)
    if _use_numba(backend):
        out = np.empty_like(a)
        _nb_mul_mod_shoup(a, w, w_shoup, out, qq)
        return out
    with numpy_kernels.Scratch() as s:
        return numpy_kernels.mul_shoup(a, w, w_shoup, qq, s)


def add_mod(a: U64Array, b: U64Array, q: int) -> U64Array:
    """a + b mod q element-wise (a, b < q)."""
    _check_pair(a, b, q)
    with numpy_kernels.Scratch() as s:
        return numpy_kernels.add(a, b, np.uint64(q), s)


def add_mod_into(total: U64Array, addend: U64Array, q: int) -> None:
    """total = total + addend mod q in place, for arrays (or views) of any shape whose
    entries are below q.  Its one temporary, of total's size, is zeroed before it is
    freed (the values may be secret): call it per limb of a ciphertext, not on a whole
    vector (fresh large buffers cost page faults)."""
    np.add(total, addend, out=total)  # both below q < 2^62: no overflow
    _reduce_once_into(total, np.empty_like(total), np.uint64(q))


def sub_mod_into(total: U64Array, subtrahend: U64Array, q: int) -> None:
    """total = total - subtrahend mod q in place, as :func:`add_mod_into` (whose notes
    apply): one temporary, zeroed before it is freed."""
    modulus = np.uint64(q)
    scratch = np.subtract(modulus, subtrahend)  # q - b in (0, q]
    np.add(total, scratch, out=total)  # a + q - b in (0, 2q)
    _reduce_once_into(total, scratch, modulus)


def _reduce_once_into(total: U64Array, scratch: U64Array, modulus: np.uint64) -> None:
    """Values below 2q -> below q, in place; then zero the scratch (noise.wipe, which
    this module cannot import)."""
    np.subtract(total, modulus, out=scratch)
    np.minimum(total, scratch, out=total)  # below q, total - q wraps above total
    scratch.fill(0)


def sub_mod(a: U64Array, b: U64Array, q: int) -> U64Array:
    """a - b mod q element-wise (a, b < q)."""
    _check_pair(a, b, q)
    with numpy_kernels.Scratch() as s:
        return numpy_kernels.sub(a, b, np.uint64(q), s)
