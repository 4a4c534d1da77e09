"""The negacyclic NTT of threshold_fl.crypto.ntt against OpenFHE and against arithmetic.

Real limbs are read out of OpenFHE BINARY blobs with a small private scanner
(each RNS limb is ``[u64 n][n x u64][u64 q]`` in evaluation form).
``openfhe_share_noise`` is the check the library will run at start-up: our
c0 + c1*s must equal OpenFHE's own decryption share up to its flooding noise.

Run ``python tests/test_ring_ntt.py`` for the speed figures (not a test).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest

from threshold_fl.crypto import (
    CkksContext,
    combine_public_shares,
    context_for,
    lead_keygen,
    member_keygen,
    ntt,
    ntt_numpy,
    threshold_params,
)
from threshold_fl.crypto.noise import GaussianSampler, wipe
from threshold_fl.errors import ParameterError

REPO = Path(__file__).resolve().parent.parent
U64 = npt.NDArray[np.uint64]
BACKENDS = ["numpy"] + (["numba"] if ntt.backend() == "numba" else [])
FLOODING_PARTIES = 3


# -- helpers -------------------------------------------------------------------------
def _is_prime(q: int) -> bool:
    # Deterministic Miller-Rabin for q < 3.3e24 with these bases.
    if q < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    if q in bases:
        return True
    d, r = q - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, q)
        if x in (1, q - 1):
            continue
        for _ in range(r - 1):
            x = x * x % q
            if x == q - 1:
                break
        else:
            return False
    return True


def ntt_prime(bits: float, n: int) -> int:
    """The largest prime below 2^bits that is 1 mod 2n."""
    k = int(2**bits) // (2 * n)
    while not _is_prime(k * 2 * n + 1):
        k -= 1
    return k * 2 * n + 1


@dataclass(frozen=True)
class Limb:
    offset: int  # byte offset of the coefficient words
    modulus: int
    values: U64


def blob_limbs(blob: bytes, n: int) -> list[Limb]:
    """Every RNS limb ``[u64 n][n words < q][u64 q]`` in an OpenFHE BINARY blob, in order."""
    marker = n.to_bytes(8, "little")
    limbs: list[Limb] = []
    position = blob.find(marker)
    while position >= 0:
        end = position + 8 + 8 * n
        q = int.from_bytes(blob[end : end + 8], "little") if end + 8 <= len(blob) else 0
        if 2**20 < q < 2**62 and (q - 1) % (2 * n) == 0:
            values = np.frombuffer(blob, dtype="<u8", count=n, offset=position + 8)
            if int(values.max()) < q:
                limbs.append(Limb(position + 8, q, values.astype(np.uint64)))
                position = blob.find(marker, end + 8)
                continue
        position = blob.find(marker, position + 1)
    return limbs


def limb_of(blob: bytes, n: int, modulus: int) -> U64:
    (limb,) = [limb for limb in blob_limbs(blob, n) if limb.modulus == modulus]
    return limb.values


def centred(values: U64, q: int) -> npt.NDArray[np.int64]:
    """Residues as signed integers in (-q/2, q/2] (exact: q < 2^62)."""
    signed = values.astype(np.int64)
    return np.where(values > np.uint64(q // 2), signed - np.int64(q), signed)


def max_bits(values: U64, q: int) -> float:
    return math.log2(float(np.abs(centred(values, q)).max()) + 1.0)


def decryption_residue(ciphertext_blob: bytes, secret_blob: bytes, n: int) -> list[Limb]:
    """c0 + c1*s per limb of a two-element ciphertext, in evaluation form (ours)."""
    limbs = blob_limbs(ciphertext_blob, n)
    half = len(limbs) // 2
    residues = []
    for c0, c1 in zip(limbs[:half], limbs[half:], strict=True):
        q = c0.modulus
        s = limb_of(secret_blob, n, q)
        residues.append(Limb(c0.offset, q, ntt.add_mod(c0.values, ntt.mul_mod(c1.values, s, q), q)))
    return residues


def openfhe_share_noise(context: CkksContext, secret: Any, ciphertext: Any, *, lead: bool) -> float:
    """log2 of the largest coefficient of (OpenFHE's share - ours), over every limb.

    Ours is c1*s (+ c0 for the lead) per limb; OpenFHE's adds its Gaussian noise, so
    the difference, back in coefficient form, must be about that noise: 2^20-ish, not
    the uniform 2^(log q) a wrong root, ordering or product would give.
    """
    cc, n = context.native, context.native.GetRingDimension()
    decrypt = cc.MultipartyDecryptLead if lead else cc.MultipartyDecryptMain
    (share,) = decrypt([ciphertext], secret)
    share_limbs = blob_limbs(context.serialize(share), n)
    ct_limbs = blob_limbs(context.serialize(ciphertext), n)
    secret_blob = context.serialize(secret)
    half = len(ct_limbs) // 2
    worst = 0.0
    for index, limb in enumerate(share_limbs):
        q = limb.modulus
        c0, c1 = ct_limbs[index], ct_limbs[half + index]
        ours = ntt.mul_mod(c1.values, limb_of(secret_blob, n, q), q)
        if lead:
            ours = ntt.add_mod(ours, c0.values, q)
        noise = ntt.tables_for(n, q).inverse(ntt.sub_mod(limb.values, ours, q))
        worst = max(worst, max_bits(noise, q))
    return worst


@dataclass
class Threshold:
    context: CkksContext
    lead: Any
    members: list[Any]
    public: Any


@pytest.fixture(scope="module")
def federation() -> Threshold:
    context = context_for(threshold_params(FLOODING_PARTIES))
    lead = lead_keygen(context, 1)
    members = [member_keygen(context, i, lead.public_share) for i in (2, 3)]
    shares = {party.index: party.public_share for party in (lead, *members)}
    joint = combine_public_shares(context, shares, 1)
    return Threshold(context, lead, members, joint.key.native)


@pytest.fixture(scope="module")
def single_key() -> tuple[CkksContext, Any]:
    context = context_for(threshold_params(FLOODING_PARTIES))
    return context, context.native.KeyGen()


def _bit_reversal(n: int) -> npt.NDArray[np.intp]:
    bits = n.bit_length() - 1
    return np.array([int(format(i, f"0{bits}b")[::-1], 2) for i in range(n)])


# -- the root and the ordering, against OpenFHE -------------------------------------------
def test_root_is_the_one_openfhe_stores(single_key: tuple[CkksContext, Any]) -> None:
    """OpenFHE's rule (the smallest primitive 2n-th root) gives the root in its header."""
    context, keys = single_key
    n = context.native.GetRingDimension()
    blob = context.serialize(keys.secretKey)
    moduli = [limb.modulus for limb in blob_limbs(blob, n)]
    assert len(moduli) == 2  # the first modulus and the scaling modulus
    for q in moduli:
        root = ntt.root_of_unity(2 * n, q)
        assert pow(root, n, q) == q - 1
        assert root.to_bytes(8, "little") in blob[: blob_limbs(blob, n)[0].offset]


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_encryption_decrypts_to_small_coefficients(
    single_key: tuple[CkksContext, Any], backend: str
) -> None:
    """(a) c0 + c1*s of an encryption of zeros, inverse-transformed, is the small
    encryption noise on every limb; a bit-reversed (wrongly ordered) input is not."""
    context, keys = single_key
    cc, n = context.native, context.native.GetRingDimension()
    fresh = cc.Encrypt(keys.publicKey, cc.MakeCKKSPackedPlaintext([0j] * 8))  # both limbs
    residues = decryption_residue(context.serialize(fresh), context.serialize(keys.secretKey), n)
    assert len(residues) == 2
    wrong_order = _bit_reversal(n)
    for residue in residues:
        tables = ntt.tables_for(n, residue.modulus)
        assert max_bits(tables.inverse(residue.values, backend=backend), residue.modulus) < 30
        scrambled = tables.inverse(residue.values[wrong_order], backend=backend)
        assert max_bits(scrambled, residue.modulus) > 50


def test_decoded_coefficients_are_the_encrypted_vector(single_key: tuple[CkksContext, Any]) -> None:
    """(b) Our inverse NTT of c0 + c1*s, decoded by the canonical embedding (slot j at
    xi^(5^j), xi = exp(i pi / n)), is the encrypted vector: the coefficients are
    OpenFHE's plaintext polynomial in natural order."""
    context, keys = single_key
    n = context.native.GetRingDimension()
    values = np.random.default_rng(3).uniform(-0.5, 0.5, n).astype(np.float64)
    ciphertext = context.encrypt_upload(keys.publicKey, values)
    (residue,) = decryption_residue(
        context.serialize(ciphertext), context.serialize(keys.secretKey), n
    )
    q = residue.modulus
    coefficients = centred(ntt.tables_for(n, q).inverse(residue.values), q).astype(np.float64)
    twisted = coefficients * np.exp(1j * np.pi * np.arange(n) / n)
    evaluations = np.fft.ifft(twisted) * n  # the polynomial at xi^(2k+1), k = 0..n-1
    slots = evaluations[[(pow(5, j, 2 * n) - 1) // 2 for j in range(n // 2)]]
    slots /= ciphertext.GetScalingFactor()
    np.testing.assert_allclose(slots, values[0::2] + 1j * values[1::2], rtol=0, atol=1e-12)
    # OpenFHE's Decrypt adds flooding noise of its own in this mode, as wide as a share's.
    openfhe_values = context.decode(context.native.Decrypt(keys.secretKey, ciphertext), n)
    bound = context.error_bound(1) / context.params.encoding_divisor
    np.testing.assert_allclose(openfhe_values, values, rtol=0, atol=bound)


def test_our_products_match_openfhe_shares(federation: Threshold) -> None:
    """(c) c0 + c1*s_lead and c1*s_member equal OpenFHE's MultipartyDecryptLead / Main
    up to its flooding noise (2^22.6 wide here), far below the 60-bit modulus."""
    context = federation.context
    values = np.linspace(-0.5, 0.5, context.values_per_ciphertext, dtype=np.float64)
    ciphertext = context.encrypt_upload(federation.public, values)
    sigma_bits = context.params.decryption_noise_bits()
    lead_noise = openfhe_share_noise(context, federation.lead.secret.native, ciphertext, lead=True)
    assert sigma_bits < lead_noise < sigma_bits + 4
    for member in federation.members:
        noise = openfhe_share_noise(context, member.secret.native, ciphertext, lead=False)
        assert sigma_bits < noise < sigma_bits + 4


def test_a_share_made_here_fuses_with_openfhes(federation: Threshold) -> None:
    """Our lead share (c0 + c1*s + NTT(e), e from noise.py), spliced into the bytes of
    an OpenFHE share (test-only splice; ring.py will do this properly), fuses with
    OpenFHE's member shares to the encrypted values within the error bound."""
    context = federation.context
    cc, n = context.native, context.native.GetRingDimension()
    rng = np.random.default_rng(5)
    values = rng.uniform(-0.5, 0.5, context.values_per_ciphertext).astype(np.float64)
    ciphertext = context.encrypt_upload(federation.public, values)
    lead_secret = federation.lead.secret.native
    (template,) = cc.MultipartyDecryptLead([ciphertext], lead_secret)
    blob = bytearray(context.serialize(template))
    (residue,) = decryption_residue(
        context.serialize(ciphertext), context.serialize(lead_secret), n
    )
    q = residue.modulus
    sampler = GaussianSampler(2.0 ** context.params.decryption_noise_bits())
    noise = sampler.sample_mod(n, [q])[0]
    share = ntt.add_mod(residue.values, ntt.tables_for(n, q).forward(noise), q)
    wipe(noise)
    (slot,) = blob_limbs(bytes(blob), n)
    blob[slot.offset : slot.offset + 8 * n] = share.astype("<u8").tobytes()
    ours = context.deserialize_ciphertext(bytes(blob))
    mains = [cc.MultipartyDecryptMain([ciphertext], m.secret.native)[0] for m in federation.members]
    fused = context.decode(cc.MultipartyDecryptFusion([ours, *mains]), values.size)
    bound = context.error_bound(FLOODING_PARTIES) / context.params.encoding_divisor
    assert np.abs(fused - values).max() < bound


# -- arithmetic: both backends, big moduli, against Python integers ------------------------
MODULI_BITS = [20, 50, 60, 61.99]


@pytest.mark.parametrize("bits", MODULI_BITS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_product_in_ntt_domain_is_negacyclic_convolution(bits: float, backend: str) -> None:
    n = 32
    q = ntt_prime(bits, n)
    tables = ntt.NttTables(n, q)
    rng = np.random.default_rng(int(bits * 100))
    a, b = (rng.integers(0, q, n, dtype=np.uint64) for _ in range(2))
    product = tables.inverse(
        ntt.mul_mod(tables.forward(a, backend=backend), tables.forward(b, backend=backend), q),
        backend=backend,
    )
    expected = [0] * n
    for i, x in enumerate(a.tolist()):
        for j, y in enumerate(b.tolist()):
            k, sign = (i + j, 1) if i + j < n else (i + j - n, -1)  # X^n = -1
            expected[k] = (expected[k] + sign * x * y) % q
    assert product.tolist() == expected


@pytest.mark.parametrize("n", [8192, 16384])
@pytest.mark.parametrize("bits", [60, 61.99])
def test_backends_agree_and_round_trip(n: int, bits: float) -> None:
    q = ntt_prime(bits, n)
    tables = ntt.tables_for(n, q)
    x = np.random.default_rng(n).integers(0, q, n, dtype=np.uint64)
    x[:4] = [0, 1, q - 1, q - 2]
    forward = {name: tables.forward(x, backend=name) for name in BACKENDS}
    assert all(np.array_equal(forward["numpy"], f) for f in forward.values())
    for name in BACKENDS:
        assert np.array_equal(tables.inverse(forward["numpy"], backend=name), x)
        assert np.array_equal(tables.forward(tables.inverse(x, backend=name), backend=name), x)


def test_forward_evaluates_at_odd_powers_in_bit_reversed_order() -> None:
    """Slot i holds a(psi^(2 bitrev(i) + 1)): the convention, stated directly."""
    n, q = 16, ntt_prime(60, 16)
    tables = ntt.NttTables(n, q)
    a = np.random.default_rng(1).integers(0, q, n, dtype=np.uint64)
    reversal = _bit_reversal(n)
    expected = [
        sum(
            c * pow(tables.root, (2 * int(reversal[i]) + 1) * k, q)
            for k, c in enumerate(a.tolist())
        )
        % q
        for i in range(n)
    ]
    assert tables.forward(a).tolist() == expected


@pytest.mark.parametrize("bits", [2, 31, 60, 61.999])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mul_mod_matches_python_integers(bits: float, backend: str) -> None:
    q = ntt_prime(bits, 1) if bits > 2 else 3
    rng = np.random.default_rng(int(bits * 1000))
    a = rng.integers(0, q, 4096, dtype=np.uint64)
    b = rng.integers(0, q, 4096, dtype=np.uint64)
    edges = [0, 1, q - 1, q - 2 if q > 2 else 0]
    a[:16] = np.repeat(edges, 4)
    b[:16] = np.tile(edges, 4)
    expected = [x * y % q for x, y in zip(a.tolist(), b.tolist(), strict=True)]
    assert ntt.mul_mod(a, b, q, backend=backend).tolist() == expected
    shoup = ntt.shoup_precompute(b, q)
    assert ntt.mul_mod_shoup(a, b, shoup, q, backend=backend).tolist() == expected
    assert ntt.add_mod(a, b, q).tolist() == [
        (x + y) % q for x, y in zip(a.tolist(), b.tolist(), strict=True)
    ]
    assert ntt.sub_mod(a, b, q).tolist() == [
        (x - y) % q for x, y in zip(a.tolist(), b.tolist(), strict=True)
    ]


@pytest.mark.parametrize("bits", [2, 31, 60, 61.999])
def test_in_place_add_and_sub_match_python_integers(bits: float) -> None:
    """add_mod_into and sub_mod_into on views of a (count, limbs, n) array, edges
    included, give what Python's integers give and leave the operand as it was."""
    q = ntt_prime(bits, 1) if bits > 2 else 3
    rng = np.random.default_rng(int(bits * 1000) + 1)
    edges = [0, 1, q - 1, q - 2 if q > 2 else 0]
    a = rng.integers(0, q, (2, 3, 64), dtype=np.uint64)
    b = rng.integers(0, q, (2, 3, 64), dtype=np.uint64)
    a[0, 0, :16] = np.repeat(edges, 4)
    b[0, 0, :16] = np.tile(edges, 4)
    operand = b.copy()
    for into, op in ((ntt.add_mod_into, int.__add__), (ntt.sub_mod_into, int.__sub__)):
        total = a.copy()
        into(total[:, 1], b[:, 1], q)  # a strided view: only that limb changes
        expected = a.copy()
        expected[:, 1] = np.array([op(x, y) % q for x, y in zip(
            a[:, 1].ravel().tolist(), b[:, 1].ravel().tolist(), strict=True)],
            dtype=np.uint64).reshape(2, 64)
        assert np.array_equal(total, expected)
        assert np.array_equal(b, operand)


class _Kept(ntt_numpy.Scratch):
    """A Scratch that remembers every temporary it was given, to look at after the wipe."""

    seen: ClassVar[list[npt.NDArray[Any]]] = []

    def __call__(self, array: Any) -> Any:
        _Kept.seen.append(array)
        return super().__call__(array)


def test_the_numpy_path_zeroes_its_temporaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Secret operands leave no copies behind on the numpy path: every temporary of each
    operation is zeroed when it returns, and the results still match numba's (add_mod
    and sub_mod, numpy only, match Python's exact integers instead)."""
    n, q = 64, ntt_prime(61.99, 64)
    tables = ntt.NttTables(n, q)
    rng = np.random.default_rng(7)
    a, b = (rng.integers(1, q, n, dtype=np.uint64) for _ in range(2))
    shoup = ntt.shoup_precompute(b, q)

    def exact(combine: Callable[[int, int], int]) -> npt.NDArray[Any]:
        return np.array([combine(int(x), int(y)) % q for x, y in zip(a, b, strict=True)],
                        dtype=np.uint64)

    monkeypatch.setattr(ntt_numpy, "Scratch", _Kept)
    # (the numpy path, what it must equal)
    operations: list[tuple[Callable[[], npt.NDArray[Any]], Callable[[], npt.NDArray[Any]]]] = [
        (lambda: tables.forward(a, backend="numpy"), lambda: tables.forward(a, backend="numba")),
        (lambda: tables.inverse(a, backend="numpy"), lambda: tables.inverse(a, backend="numba")),
        (lambda: ntt.mul_mod(a, b, q, backend="numpy"),
         lambda: ntt.mul_mod(a, b, q, backend="numba")),
        (lambda: ntt.mul_mod_shoup(a, b, shoup, q, backend="numpy"),
         lambda: ntt.mul_mod_shoup(a, b, shoup, q, backend="numba")),
        (lambda: ntt.add_mod(a, b, q), lambda: exact(lambda x, y: x + y)),
        (lambda: ntt.sub_mod(a, b, q), lambda: exact(lambda x, y: x - y))]
    for numpy_path, reference in operations:
        _Kept.seen = []
        result = numpy_path()
        assert _Kept.seen, "the numpy path registered no temporaries"
        assert all(not array.any() for array in _Kept.seen)
        expected = reference()
        assert result.any() and np.array_equal(result, expected)
    assert a.all() and b.all()  # operands are the caller's: untouched


def test_bad_inputs_raise() -> None:
    q = ntt_prime(60, 16)
    tables = ntt.NttTables(16, q)
    with pytest.raises(ParameterError):
        tables.forward(np.full(16, q, dtype=np.uint64))  # not reduced
    with pytest.raises(ParameterError):
        tables.forward(np.zeros(8, dtype=np.uint64))  # wrong length
    with pytest.raises(ParameterError):
        tables.forward(np.zeros(16, dtype=np.int64))  # wrong dtype
    with pytest.raises(ParameterError):
        ntt.NttTables(16, ntt_prime(60, 4))  # 1 mod 8 but not 1 mod 32
    with pytest.raises(ParameterError):
        ntt.NttTables(16, ntt_prime(63, 16))  # too large
    with pytest.raises(ParameterError):
        ntt.NttTables(16, q, root=3)  # not a primitive 32nd root
    with pytest.raises(ParameterError):
        ntt.mul_mod(np.zeros(3, np.uint64), np.zeros(4, np.uint64), q)
    with pytest.raises(ParameterError):
        tables.forward(np.zeros(16, np.uint64), backend="fortran")


# -- backend selection and numba's cache, in fresh interpreters -----------------------------
_PROBE = (
    "import numpy as np\n"
    "from threshold_fl.crypto import ntt\n"
    "t = ntt.NttTables(1024, 12289)\n"
    "x = np.arange(1024, dtype=np.uint64)\n"
    "assert np.array_equal(t.inverse(t.forward(x)), x)\n"
    "print(ntt.backend())\n"
)


def _run_probe(env_changes: Mapping[str, str | None], prelude: str = "") -> str:
    env = dict(os.environ)
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    result = subprocess.run(
        [sys.executable, "-c", prelude + _PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba is not installed")
def test_numpy_fallback_when_numba_fails_to_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("simulated LLVM failure")

    monkeypatch.setattr(ntt, "_backend", None)
    monkeypatch.setattr(ntt, "_compare_backends", broken)
    with pytest.warns(RuntimeWarning, match="numpy path"):
        assert ntt.backend() == "numpy"
    x = np.arange(16, dtype=np.uint64)
    assert np.array_equal(
        ntt.NttTables(16, 12289).forward(x), ntt.NttTables(16, 12289).forward(x, backend="numpy")
    )


def test_numpy_fallback_without_numba() -> None:
    # A None entry in sys.modules makes "import numba" raise ImportError.
    prelude = "import sys\nsys.modules['numba'] = None\n"
    assert _run_probe({}, prelude) == "numpy"
    assert _run_probe({"THRESHOLD_FL_NTT_BACKEND": "numpy"}) == "numpy"


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba is not installed")
def test_numba_caches_in_a_per_user_directory(tmp_path: Path) -> None:
    """With NUMBA_CACHE_DIR unset, compiled kernels go to $XDG_CACHE_HOME/threshold-fl/numba
    (never next to the sources, which may be read-only)."""
    env = {"NUMBA_CACHE_DIR": None, "XDG_CACHE_HOME": str(tmp_path)}
    assert _run_probe(env) == "numba"
    assert list((tmp_path / "threshold-fl" / "numba").rglob("*.nbi"))


@pytest.mark.skipif("numba" not in BACKENDS, reason="numba is not installed")
def test_numba_works_when_no_cache_directory_is_writable(tmp_path: Path) -> None:
    # A path below a regular file cannot be created, even by root (who ignores modes).
    blocker = tmp_path / "file"
    blocker.write_text("")
    env: dict[str, str | None] = {
        "NUMBA_CACHE_DIR": str(blocker / "numba"),
        "XDG_CACHE_HOME": str(blocker / "xdg"),
        "HOME": str(blocker / "home"),
    }
    sources = REPO / "threshold_fl" / "crypto"
    before = {path: path.stat().st_mtime_ns for path in sources.rglob("*.nb[ic]")}
    assert _run_probe(env) == "numba"
    env["NUMBA_CACHE_DIR"] = None
    assert _run_probe(env) == "numba"
    # Compiled, not cached: in particular nothing was written next to the sources.
    assert {path: path.stat().st_mtime_ns for path in sources.rglob("*.nb[ic]")} == before


# -- speed figures (python tests/test_ring_ntt.py) -------------------------------------------
def _best_of(function: Any, repeats: int = 50) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _speed_report() -> None:
    print(f"backend: {ntt.backend()}")
    for n in (8192, 16384):
        tables = ntt.tables_for(n, ntt_prime(60, n))
        x = np.random.default_rng(0).integers(0, tables.q, n, dtype=np.uint64)
        for name in BACKENDS:
            seconds = _best_of(lambda t=tables, v=x, b=name: t.forward(v, backend=b))
            print(f"forward NTT n={n} {name}: {seconds * 1e6:.0f} us")
    context = context_for(threshold_params(FLOODING_PARTIES))
    cc, n = context.native, context.native.GetRingDimension()
    lead = lead_keygen(context, 1)
    member = member_keygen(context, 2, lead.public_share)
    joint = combine_public_shares(context, {1: lead.public_share, 2: member.public_share}, 1)
    ciphertext = context.encrypt_upload(joint.key.native, np.zeros(context.values_per_ciphertext))
    sigma = 2.0 ** context.params.decryption_noise_bits()
    sampler = GaussianSampler(sigma)
    (c0, c1) = blob_limbs(context.serialize(ciphertext), n)
    q = c0.modulus
    secret = limb_of(context.serialize(member.secret.native), n, q)
    secret_shoup = ntt.shoup_precompute(secret, q)
    tables = ntt.tables_for(n, q)
    noise_time = _best_of(lambda: sampler.sample_mod(n, [q]))
    print(f"noise, one limb n={n} sigma=2^{math.log2(sigma):.1f}: {noise_time * 1e6:.0f} us")

    def share(backend: str) -> U64:
        noise = sampler.sample_mod(n, [q])[0]
        product = ntt.mul_mod_shoup(c1.values, secret, secret_shoup, q, backend=backend)
        result = ntt.add_mod(product, tables.forward(noise, backend=backend), q)
        wipe(noise)
        return result

    theirs = _best_of(lambda: cc.MultipartyDecryptMain([ciphertext], member.secret.native), 20)
    print(f"OpenFHE MultipartyDecryptMain, one ciphertext (n={n}, 1 limb): {theirs * 1e6:.0f} us")
    for name in BACKENDS:
        ours = _best_of(lambda b=name: share(b))
        print(f"our share c1*s + NTT(e), {name}: {ours * 1e6:.0f} us, {theirs / ours:.1f}x faster")


if __name__ == "__main__":
    _speed_report()
