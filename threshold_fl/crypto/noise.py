"""Wide Gaussian noise for flooding decryption shares, from AES-256-CTR only.

A partial decryption adds e_i, a rounded Gaussian of width sigma (up to
2^56), to c1 * s_i.  The only source of randomness is an AES-256-CTR keystream
(the ``cryptography`` package): a fresh key from ``os.urandom`` by default, or
a caller's (key, nonce) for deterministic per-party noise, where the same pair
always yields the same noise.

Sampling (the distribution argument is in docs/crypto.md, "Flooding noise"):
each normal comes from Box-Muller on a 53-bit uniform u in (0, 1) and a
uniform angle, so |z| <= sqrt(-2 ln 2^-54) = 8.652.  Up to sigma = 2^24 a
sample is rint(sigma z).  Above, a double (53 bits) no longer resolves the
integers well enough (at 2^57 its spacing is 2^5), so a sample is the sum of a
coarse Gaussian y1 (width ``coarse_sigma``, almost all of sigma) and an
independent fine one y2 (``fine_sigma`` = 4 sqrt(sigma)), rounded once:
x = floor(y1) + rint(frac(y1) + y2); y2 is far wider than y1's grid and
still resolved to about 2^-18 of an integer, so every low bit is restored.
"""

from __future__ import annotations

import ctypes
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from threshold_fl.arrays import FloatArray, I64Array, U64Array
from threshold_fl.crypto import ntt
from threshold_fl.errors import ParameterError

__all__ = [
    "KEY_BYTES",
    "MAX_SIGMA",
    "MIN_SIGMA",
    "NONCE_BYTES",
    "SINGLE_LEVEL_MAX_SIGMA",
    "Z_MAX",
    "AesCtrStream",
    "GaussianSampler",
    "reduce_mod",
    "wipe",
]

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 16  # the whole initial counter block
#: Largest |z| Box-Muller can return from 53-bit uniforms: u >= 2^-54.
Z_MAX = math.sqrt(-2.0 * math.log(2.0**-54))
MIN_SIGMA = 1.0
#: Up to this width one rounded normal per sample is enough: rint(sigma z) has at
#: least 2^24 representable points per integer.  Above it the sample gets a fine part.
SINGLE_LEVEL_MAX_SIGMA = 2.0**24
#: Above this the samples (|x| <= 8.66 sigma) would approach the int64 range and the
#: coarse part's floating-point error (about sigma 2^-48) would need a wider fine part.
MAX_SIGMA = 2.0**56
_EIGHTH_TURN = math.pi / 4.0
_MASK50 = np.uint64((1 << 50) - 1)
_SIGN_BIT = np.uint64(1 << 63)
_UNIT = 2.0**-53
# numba freezes globals as typed constants: uint64 shifts and masks for its kernel.
_SHIFT11, _SHIFT61, _SHIFT62, _SHIFT63 = (np.uint64(k) for k in (11, 61, 62, 63))
_ONE = np.uint64(1)


def wipe(array: npt.NDArray[np.generic] | bytearray | bytes) -> None:
    """Overwrite a buffer holding secret values (noise before it is added) with zeros.

    Best effort: copies made by numpy temporaries or the garbage collector are
    out of reach, so callers should keep secret arrays few and wipe each after use.
    Python's bytes are immutable, so a bytes object is overwritten through ctypes: pass
    only a fresh one that nothing else refers to (what a serialiser, a decryption or a
    parser just made), never a literal or one that is kept.
    """
    if isinstance(array, bytearray):
        array[:] = bytes(len(array))
    elif isinstance(array, bytes):
        address = ctypes.cast(ctypes.c_char_p(array), ctypes.c_void_p).value
        if len(array) > 1 and address is not None:  # b"" and 1-byte objects are shared
            ctypes.memset(address, 0, len(array))
    else:
        array.fill(0)


class AesCtrStream:
    """A keystream of 64-bit words from AES-256-CTR.

    ``key`` defaults to 32 bytes from ``os.urandom``.  A (key, nonce) pair names
    one stream: two streams with the same pair are identical, which is what
    deterministic per-party noise wants and what nothing else may do.
    """

    def __init__(self, key: bytes | None = None, nonce: bytes | None = None) -> None:
        key = os.urandom(KEY_BYTES) if key is None else key
        nonce = bytes(NONCE_BYTES) if nonce is None else nonce
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ParameterError(f"the AES key must be {KEY_BYTES} bytes")
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise ParameterError(f"the CTR nonce must be {NONCE_BYTES} bytes")
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self._zeros = b""

    def read_uint64(self, count: int) -> U64Array:
        """The next ``count`` keystream words (little-endian), as a new writable array."""
        size = 8 * count
        if len(self._zeros) < size:
            self._zeros = bytes(size)
        # Encrypting zeros yields the keystream.  update_into writes straight into the
        # array we return (``update`` would make immutable bytes nobody could wipe);
        # it wants block_size - 1 spare bytes.
        out = bytearray(size + 15)
        self._encryptor.update_into(memoryview(self._zeros)[:size], out)
        return np.frombuffer(out, dtype="<u8", count=count)


class GaussianSampler:
    """Rounded Gaussian integers of width ``sigma`` from an AES-CTR keystream.

    Every sample satisfies |x| <= ``tail_bound``.  ``key``/``nonce`` as for
    :class:`AesCtrStream`; successive calls continue the stream.
    """

    def __init__(self, sigma: float, *, key: bytes | None = None, nonce: bytes | None = None):
        if not MIN_SIGMA <= sigma <= MAX_SIGMA:  # also refuses NaN
            raise ParameterError(
                f"sigma must be in [{MIN_SIGMA}, 2^56] (int64 samples), got {sigma!r}"
            )
        self.sigma = float(sigma)
        if self.sigma <= SINGLE_LEVEL_MAX_SIGMA:
            self.fine_sigma = 0.0  # rint(sigma z) already resolves far below one integer
        else:
            # 4 sqrt(sigma) balances the two error terms of docs/crypto.md.
            self.fine_sigma = 4.0 * math.sqrt(self.sigma)
        self.coarse_sigma = math.sqrt(self.sigma**2 - self.fine_sigma**2)
        self.tail_bound = math.ceil(Z_MAX * (self.coarse_sigma + self.fine_sigma)) + 1
        self._stream = AesCtrStream(key, nonce)

    def sample(self, count: int) -> I64Array:
        """``count`` samples as int64 (the caller wipes them after use)."""
        if count < 0:
            raise ParameterError(f"count must be >= 0, got {count}")
        if not self.fine_sigma:
            normals = self._normals((count + 1) // 2)
            coarse = normals[:count]
            coarse *= self.sigma
            np.rint(coarse, out=coarse)
            result = coarse.astype(np.int64)
            wipe(normals)
            return result
        normals = self._normals(count)
        # The coarse and fine parts of sample j come from Box-Muller pairs j and j + 1.
        coarse, fine = normals[:count], normals[len(normals) // 2 :][:count]
        coarse *= self.coarse_sigma
        whole = np.floor(coarse)
        coarse -= whole  # frac(y1), exact or (y1 < 0) within 2^-53: far below the fine part
        fine *= self.fine_sigma
        fine += coarse
        np.rint(fine, out=fine)
        result = whole.astype(np.int64)
        rounded = fine.astype(np.int64)
        result += rounded
        for temporary in (normals, whole, rounded):
            wipe(temporary)
        return result

    def sample_mod(self, count: int, moduli: Sequence[int]) -> U64Array:
        """``count`` samples reduced modulo each of ``moduli``: uint64 [len(moduli), count].

        One integer polynomial, so its limbs are CRT-consistent.
        """
        values = self.sample(count)
        try:
            return reduce_mod(values, moduli)
        finally:
            wipe(values)

    def _normals(self, pairs: int) -> FloatArray:
        """2 max(pairs, 2) standard normals by Box-Muller, in two halves.

        Pair j = (u_j, v_j) gives r_j cos(2 pi v_j) and r_j sin(2 pi v_j), r_j =
        sqrt(-2 ln u_j).  The first half holds the cosines of pairs 0, 1, ...; the
        second the sines of pairs 1, 2, ..., 0, so slots j and j + half never share
        a pair and are independent.  The compiled kernel computes the same formulas
        (about 3x faster); libm and numpy may differ in the last bit of a cosine.
        """
        pairs = max(pairs, 2)
        words = self._stream.read_uint64(2 * pairs)
        if _compiled():
            normals = np.empty(2 * pairs)
            _nb_box_muller(words, normals)
            wipe(words)
            return normals
        return _np_box_muller(words)


def _np_box_muller(words: U64Array) -> FloatArray:
    """numpy's Box-Muller on 2 * pairs keystream words (see GaussianSampler._normals)."""
    pairs = words.size // 2
    head = words[:pairs]
    head >>= np.uint64(11)  # 53 bits of u, in place so that wiping words covers them
    radius = head.view(np.int64).astype(np.float64)  # int64 converts faster than uint64
    cos, sin = _unit_circle(words[pairs:])
    wipe(words)
    radius += 0.5  # u = (k + 1/2) 2^-53 is never 0, so the log is finite
    radius *= _UNIT
    np.log(radius, out=radius)
    radius *= -2.0
    np.sqrt(radius, out=radius)
    normals = np.empty(2 * pairs)
    np.multiply(cos, radius, out=normals[:pairs])
    np.multiply(sin[1:], radius[1:], out=normals[pairs:-1])
    normals[-1] = sin[0] * radius[0]
    for temporary in (radius, cos, sin):
        wipe(temporary)
    return normals


@ntt._jit
def _nb_box_muller(words: U64Array, out: FloatArray) -> None:  # pragma: no cover - compiled
    pairs = words.size // 2
    for j in range(pairs):
        radius = math.sqrt(-2.0 * math.log(
            (float(np.int64(words[j] >> _SHIFT11)) + 0.5) * _UNIT))
        word = words[pairs + j]
        theta = float(np.int64(word & _MASK50)) * (_EIGHTH_TURN * 2.0**-50)
        x, y = math.cos(theta), math.sin(theta)
        b2 = (word >> _SHIFT63) & _ONE
        b1 = (word >> _SHIFT62) & _ONE
        if b1 ^ ((word >> _SHIFT61) & _ONE):
            x, y = y, x
        if b2 ^ b1:
            x = -x
        if b2:
            y = -y
        out[j] = radius * x
        out[pairs + j - 1 if j else 2 * pairs - 1] = radius * y


_kernel_ok: bool | None = None


def _compiled() -> bool:
    """Whether the numba kernel is used: numba is the NTT backend and the kernel agrees
    with numpy on a probe (checked once; a failure warns and keeps numpy)."""
    global _kernel_ok
    if _kernel_ok is None:
        _kernel_ok = ntt.backend() == "numba" and _probe_kernel()
    return _kernel_ok


def _probe_kernel() -> bool:
    words = AesCtrStream(bytes(KEY_BYTES)).read_uint64(512)
    try:
        fast = np.empty(512)
        _nb_box_muller(words.copy(), fast)
    except Exception as exc:  # a numba that fails to compile: keep numpy
        warnings.warn(f"numba could not compile the noise kernel ({exc}); using numpy",
                      RuntimeWarning, stacklevel=3)
        return False
    return bool(np.allclose(fast, _np_box_muller(words), rtol=1e-13, atol=0))


def _unit_circle(words: U64Array) -> tuple[FloatArray, FloatArray]:
    """(cos, sin) of a uniform angle per word: the top 3 bits pick the octant, 50
    bits the angle t within it.

    cos and sin are about twice as fast on [0, pi/4) as on [0, 2 pi), and the eight
    octants are exact swaps and sign changes of (cos t, sin t), so the angle stays
    uniform.  With octant bits b2 b1 b0: swap iff b1 ^ b0 (octants 1, 2, 5, 6),
    negate x iff b2 ^ b1 (octants 2-5), negate y iff b2 (octants 4-7).  Done on the
    bit patterns because masked numpy selects cost more than the trigonometry.
    """
    theta = (words & _MASK50).view(np.int64).astype(np.float64)
    theta *= _EIGHTH_TURN * 2.0**-50
    x = np.cos(theta).view(np.uint64)
    y = np.sin(theta, out=theta).view(np.uint64)
    swap = ((words >> np.uint64(62)) ^ (words >> np.uint64(61))) & np.uint64(1)
    swap = np.uint64(0) - swap  # all ones where the octant swaps cos and sin
    swap &= x ^ y
    x ^= swap
    y ^= swap
    swap[:] = words ^ (words << np.uint64(1))
    swap &= _SIGN_BIT
    x ^= swap
    swap[:] = words & _SIGN_BIT
    y ^= swap
    wipe(swap)
    return x.view(np.float64), y.view(np.float64)


def reduce_mod(values: I64Array, moduli: Sequence[int]) -> U64Array:
    """Signed integers -> uint64 residues [len(moduli), len(values)] (negative x -> q - |x|)."""
    if values.dtype != np.int64 or values.ndim != 1:
        raise ParameterError("values must be a 1-D int64 array")
    out = np.empty((len(moduli), values.size), dtype=np.uint64)
    low = int(values.min()) if values.size else 0
    high = int(values.max()) if values.size else 0
    for row, q in zip(out, moduli, strict=True):
        if not 2 <= q < 2**63:
            raise ParameterError(f"modulus {q} must be in [2, 2^63)")
        if -q < low and high < q:
            # The common case (|x| < q): one select instead of an integer division.
            row[:] = np.where(values < 0, values + np.int64(q), values).view(np.uint64)
        else:
            row[:] = np.mod(values, np.int64(q)).view(np.uint64)
    return out
