"""NVIDIA FLARE's homomorphic-encryption FedAvg round, redone with TenSEAL as a baseline.

Benchmark code (it reads the clock): it measures one FedAvg round the way NVIDIA
FLARE's HE components do it, so the benchmarks can put FLARE's costs next to ours on
the same vectors.  What FLARE does, and what this module reproduces:

* **Provisioning** (FLARE's ``HEBuilder``): one TenSEAL CKKS context with
  ``poly_modulus_degree=8192``, ``coeff_mod_bit_sizes=[60, 40, 40]``, global scale
  ``2**40``, *symmetric* encryption (``ENCRYPTION_TYPE.SYMMETRIC``: clients encrypt
  with the secret key), relinearisation keys and **no Galois keys**.  Every client
  gets the same context with the secret key; the server gets it without the secret
  (and public) key.  There is no key agreement: one secret key shared by all clients.
* **Clients** (``HEModelEncryptor``): each multiplies its update by its aggregation
  weight in the clear, then encrypts each tensor (layer) as one ``ts.ckks_vector``
  and sends ``ckks_vector.serialize()``.  The serialized vector does *not* include
  the context (the receiver supplies its own to ``ts.ckks_vector_from``).
* **Server** (``HEInTimeAccumulateWeightedAggregator``): deserializes each upload as it
  arrives, adds the ciphertexts layer by layer, and finally multiplies each layer's
  sum by ``1 / sum(weights)`` (a plaintext scalar product: TenSEAL rescales it, so the
  aggregate comes back with one RNS limb instead of two; and because TenSEAL sets the
  scale back to exactly ``2**40`` after rescaling by a prime ``q_1`` that is only
  close to ``2**40``, the average carries a systematic relative error of
  ``|2**40 / q_1 - 1|``, about 6.7e-7 for these parameters).
* **Clients** (``HEModelDecryptor``): deserialize the aggregate and decrypt with the
  shared secret key.

TenSEAL packs ``N / 2 = 4096`` real values per ciphertext.  A ``ckks_vector`` longer
than that is split by TenSEAL itself into ``ceil(n / 4096)`` ciphertexts, so a layer
of 4097 values costs two full ciphertexts.  (For such vectors TenSEAL prints a
three-line warning to ``sys.stdout`` about the matrix operations it then disables;
:func:`run_flare_round` swallows it.)  A serialized two-limb ciphertext takes about
235 KB: SEAL compresses its 2 polynomials x 2 limbs x 8192 coefficients x 8 bytes =
262,144 raw bytes with zstd, so a full one costs about 57.5 bytes per value.

The round is processed layer by layer (each client's layer is encrypted, sent and
added to the running sum before the next client's), so peak memory is a few times
the encrypted size of the largest layer, not of the whole model.  TenSEAL is an
optional dependency: ``pip install 'threshold-fl[bench]'``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from threshold_fl.arrays import FloatArray
from threshold_fl.errors import EnvironmentError_, ParameterError

__all__ = [
    "FLARE_COEFF_MOD_BIT_SIZES",
    "FLARE_POLY_MODULUS_DEGREE",
    "FLARE_SCALE_BITS",
    "FLARE_SLOTS",
    "FlareRound",
    "TenSEALUnavailableError",
    "ciphertexts_for",
    "run_flare_round",
    "tenseal_available",
    "tenseal_version",
]

# NVIDIA FLARE's defaults (nvflare.lighter.impl.he.HEBuilder).
FLARE_POLY_MODULUS_DEGREE = 8192
FLARE_COEFF_MOD_BIT_SIZES: tuple[int, ...] = (60, 40, 40)
FLARE_SCALE_BITS = 40
FLARE_SLOTS = FLARE_POLY_MODULUS_DEGREE // 2  # real values per CKKS ciphertext

_INSTALL_HINT = "pip install 'threshold-fl[bench]'"

Progress = Callable[[str], None]


class TenSEALUnavailableError(EnvironmentError_):
    """TenSEAL (the benchmark-only dependency of the FLARE baseline) cannot be imported."""


def _import_tenseal() -> ModuleType:
    try:
        return importlib.import_module("tenseal")
    except ImportError as exc:
        raise TenSEALUnavailableError(
            f"the NVIDIA FLARE baseline needs TenSEAL, which is not installed or does not "
            f"load ({exc}); install the benchmark extra: {_INSTALL_HINT}"
        ) from exc


def tenseal_available() -> bool:
    """Whether TenSEAL can be imported here (the FLARE baseline can run)."""
    try:
        _import_tenseal()
    except TenSEALUnavailableError:
        return False
    return True


def tenseal_version() -> str:
    """The installed TenSEAL version; :class:`TenSEALUnavailableError` when there is none."""
    return str(_import_tenseal().__version__)


def ciphertexts_for(n_values: int) -> int:
    """How many CKKS ciphertexts TenSEAL uses for one ``ckks_vector`` of *n_values*."""
    return -(-n_values // FLARE_SLOTS)


@dataclass(frozen=True)
class FlareRound:
    """What one FLARE-style encrypted FedAvg round cost, and how exact it was.

    Times are seconds of ``time.perf_counter``.  ``encrypt_s`` includes the clear
    pre-weighting and ``serialize()``, as FLARE's encryptor times it;
    ``aggregate_s`` includes deserializing the uploads, the additions, the scaling by
    ``1 / sum(weights)`` and serializing the aggregate; ``decrypt_s`` is one client's
    deserialization and decryption (every client does the same work).
    """

    n_clients: int
    n_values: int
    n_layers: int
    ciphertexts_per_client: int  # SEAL ciphertexts in one client's upload (and the aggregate)
    n_threads: int  # TenSEAL's thread count for multi-ciphertext vectors
    divide_on_server: bool
    setup_s: float  # provisioning: context, key generation, serializing and loading contexts
    encrypt_s: tuple[float, ...]  # per client
    aggregate_s: float
    decrypt_s: float  # one client
    upload_bytes: tuple[int, ...]  # serialized ckks_vectors of each client, summed over layers
    download_bytes: int  # serialized aggregate, sent to each client
    client_context_bytes: int  # provisioning: context with the secret key (to each client)
    server_context_bytes: int  # provisioning: context without secret key (to the server)
    max_abs_error: float  # decrypted average vs float64 plaintext weighted average
    max_abs_value: float  # largest magnitude in the plaintext weighted average
    tenseal_version: str
    average: FloatArray = field(repr=False, compare=False)  # the decrypted average

    @property
    def encrypt_total_s(self) -> float:
        return sum(self.encrypt_s)

    @property
    def encrypt_mean_s(self) -> float:
        return self.encrypt_total_s / self.n_clients

    @property
    def he_compute_s(self) -> float:
        """All clients' encryptions, the aggregation and one client's decryption."""
        return self.encrypt_total_s + self.aggregate_s + self.decrypt_s

    @property
    def upload_bytes_per_client(self) -> float:
        return sum(self.upload_bytes) / self.n_clients

    @property
    def upload_bytes_per_value(self) -> float:
        return self.upload_bytes_per_client / self.n_values

    @property
    def download_bytes_per_value(self) -> float:
        return self.download_bytes / self.n_values

    @property
    def max_rel_error(self) -> float:
        """``max_abs_error`` relative to the average's largest magnitude (0 for all zeros)."""
        return self.max_abs_error / self.max_abs_value if self.max_abs_value > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (the decrypted vector left out)."""
        return {
            "system": "tenseal (NVIDIA FLARE defaults)",
            "tenseal_version": self.tenseal_version,
            "poly_modulus_degree": FLARE_POLY_MODULUS_DEGREE,
            "coeff_mod_bit_sizes": list(FLARE_COEFF_MOD_BIT_SIZES),
            "scale_bits": FLARE_SCALE_BITS,
            "n_clients": self.n_clients,
            "n_values": self.n_values,
            "n_layers": self.n_layers,
            "ciphertexts_per_client": self.ciphertexts_per_client,
            "n_threads": self.n_threads,
            "divide_on_server": self.divide_on_server,
            "setup_s": self.setup_s,
            "encrypt_s": list(self.encrypt_s),
            "encrypt_total_s": self.encrypt_total_s,
            "encrypt_mean_s": self.encrypt_mean_s,
            "aggregate_s": self.aggregate_s,
            "decrypt_s": self.decrypt_s,
            "he_compute_s": self.he_compute_s,
            "upload_bytes": list(self.upload_bytes),
            "upload_bytes_per_client": self.upload_bytes_per_client,
            "upload_bytes_per_value": self.upload_bytes_per_value,
            "download_bytes": self.download_bytes,
            "download_bytes_per_value": self.download_bytes_per_value,
            "client_context_bytes": self.client_context_bytes,
            "server_context_bytes": self.server_context_bytes,
            "max_abs_error": self.max_abs_error,
            "max_abs_value": self.max_abs_value,
            "max_rel_error": self.max_rel_error,
        }


# ---------------------------------------------------------------- validation

def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _checked_inputs(
    updates: Sequence[npt.ArrayLike], weights: Sequence[float], layer_sizes: Sequence[int],
) -> tuple[list[FloatArray], list[float], list[int]]:
    if len(updates) == 0:
        raise ParameterError("run_flare_round needs at least one client update, got none")
    if len(weights) != len(updates):
        raise ParameterError(
            f"one weight per client update: got {len(weights)} weights for "
            f"{len(updates)} updates"
        )
    vectors: list[FloatArray] = []
    for i, update in enumerate(updates):
        try:
            vector = np.asarray(update, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"update {i} is not an array of real numbers: {exc}") from exc
        if vector.ndim != 1:
            raise ParameterError(
                f"update {i} must be a flat (1-D) vector, got shape {vector.shape}"
            )
        if vectors and vector.shape != vectors[0].shape:
            raise ParameterError(
                f"all updates must have the same length: update {i} has {vector.size} values, "
                f"update 0 has {vectors[0].size}"
            )
        if not np.isfinite(vector).all():
            raise ParameterError(f"update {i} contains NaN or infinite values")
        vectors.append(vector)
    checked_weights: list[float] = []
    for i, weight in enumerate(weights):
        if isinstance(weight, (bool, np.bool_)) or not isinstance(
            weight, (int, float, np.integer, np.floating)
        ):
            raise ParameterError(f"weight {i} must be a real number, got {weight!r}")
        value = float(weight)
        if not math.isfinite(value) or value <= 0:
            raise ParameterError(f"weight {i} must be finite and > 0, got {weight!r}")
        checked_weights.append(value)
    sizes: list[int] = []
    for k, size in enumerate(layer_sizes):
        if not _is_int(size) or int(size) <= 0:
            raise ParameterError(f"layer size {k} must be an int > 0, got {size!r}")
        sizes.append(int(size))
    if not sizes:
        raise ParameterError("layer_sizes is empty: give the size of each layer (tensor)")
    n_values = vectors[0].size
    if sum(sizes) != n_values:
        raise ParameterError(
            f"layer sizes sum to {sum(sizes):,} but each update has {n_values:,} values; "
            f"they must be equal"
        )
    return vectors, checked_weights, sizes


# ---------------------------------------------------------------- TenSEAL, FLARE's way

@contextlib.contextmanager
def _tenseal_warnings_silenced(active: bool) -> Iterator[None]:
    """Drop what TenSEAL prints: for every ``ckks_vector`` longer than one ciphertext
    its C++ code writes a three-line warning to ``std::cout``, which pybind11 forwards
    to Python's ``sys.stdout`` (so a Python-level redirect catches it)."""
    if not active:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _provision(ts: ModuleType, n_threads: int) -> tuple[Any, Any, int, int]:
    """FLARE's HEBuilder: one context; clients get it with the secret key, the server
    without.  Returns (client context, server context, their serialized sizes)."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=FLARE_POLY_MODULUS_DEGREE,
        coeff_mod_bit_sizes=list(FLARE_COEFF_MOD_BIT_SIZES),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        n_threads=n_threads,
    )
    context.generate_relin_keys()
    context.global_scale = 2.0**FLARE_SCALE_BITS
    client_blob: bytes = context.serialize(
        save_public_key=True, save_secret_key=True, save_galois_keys=False,
        save_relin_keys=True,
    )
    server_blob: bytes = context.serialize(
        save_public_key=False, save_secret_key=False, save_galois_keys=False,
        save_relin_keys=True,
    )
    client_context = ts.context_from(client_blob, n_threads)
    server_context = ts.context_from(server_blob, n_threads)
    return client_context, server_context, len(client_blob), len(server_blob)


def run_flare_round(
    updates: Sequence[npt.ArrayLike],
    weights: Sequence[float],
    layer_sizes: Sequence[int],
    *,
    divide_on_server: bool = True,
    n_threads: int | None = None,
    progress: Progress | None = None,
) -> FlareRound:
    """Run and measure one encrypted FedAvg round as NVIDIA FLARE does it with TenSEAL.

    *updates* are the clients' flat parameter vectors (all the same length), *weights*
    their FedAvg weights (e.g. sample counts; finite, > 0), and *layer_sizes* the size
    of each tensor in vector order (they must sum to the vector length): each layer is
    encrypted as one ``ckks_vector``.  The result is the weighted average
    ``sum(w_i x_i) / sum(w)``.  With *divide_on_server* (FLARE's default split) clients
    multiply by ``w_i`` and the server multiplies the sum by ``1 / sum(w)``; without it
    clients multiply by ``w_i / sum(w)`` and the server only adds (the aggregate then
    keeps both limbs: twice the download, no rescaling error).  *n_threads* is
    TenSEAL's thread count (default: all CPUs, TenSEAL's and FLARE's default).

    Raises :class:`TenSEALUnavailableError` without TenSEAL and
    :class:`~threshold_fl.errors.ParameterError` for invalid inputs.
    """
    vectors, weight_list, sizes = _checked_inputs(updates, weights, layer_sizes)
    if n_threads is not None and (not _is_int(n_threads) or n_threads < 1):
        raise ParameterError(f"n_threads must be an int >= 1 or None, got {n_threads!r}")
    threads = int(n_threads) if n_threads is not None else (os.cpu_count() or 1)
    ts = _import_tenseal()
    say: Progress = progress if progress is not None else (lambda _message: None)

    n_clients, n_values, n_layers = len(vectors), vectors[0].size, len(sizes)
    total_weight = math.fsum(weight_list)
    client_factors = (
        weight_list if divide_on_server else [w / total_weight for w in weight_list]
    )

    started = time.perf_counter()
    client_ctx, server_ctx, client_ctx_bytes, server_ctx_bytes = _provision(ts, threads)
    setup_s = time.perf_counter() - started
    say(
        f"tenseal {ts.__version__}: FLARE context ready (N={FLARE_POLY_MODULUS_DEGREE}, "
        f"moduli {list(FLARE_COEFF_MOD_BIT_SIZES)}, scale 2^{FLARE_SCALE_BITS}) "
        f"in {setup_s:.2f} s"
    )

    encrypt_s = [0.0] * n_clients
    upload_bytes = [0] * n_clients
    aggregate_s = decrypt_s = 0.0
    download_bytes = 0
    average = np.empty(n_values, dtype=np.float64)
    reference = np.empty(n_values, dtype=np.float64)

    offset = 0
    for k, size in enumerate(sizes):
        layer = slice(offset, offset + size)
        offset += size
        split = size > FLARE_SLOTS  # TenSEAL warns on stdout for these
        total: Any = None
        for i, vector in enumerate(vectors):
            # Client i (HEModelEncryptor): pre-weight in the clear, encrypt, serialize.
            with _tenseal_warnings_silenced(split):
                started = time.perf_counter()
                weighted = vector[layer] * np.float64(client_factors[i])
                blob: bytes = ts.ckks_vector(client_ctx, weighted).serialize()
                encrypt_s[i] += time.perf_counter() - started
            upload_bytes[i] += len(blob)
            # Server (HEInTimeAccumulateWeightedAggregator.accept): add as it arrives.
            started = time.perf_counter()
            received = ts.ckks_vector_from(server_ctx, blob)
            total = received if total is None else total + received
            aggregate_s += time.perf_counter() - started
            del blob, received
        # Server (aggregate): scale by 1 / sum of weights, send to every client.
        started = time.perf_counter()
        if divide_on_server:
            total = total * (1.0 / total_weight)
        aggregate_blob: bytes = total.serialize()
        aggregate_s += time.perf_counter() - started
        download_bytes += len(aggregate_blob)
        del total
        # A client (HEModelDecryptor): deserialize and decrypt with the shared key.
        started = time.perf_counter()
        decrypted = ts.ckks_vector_from(client_ctx, aggregate_blob).decrypt()
        average[layer] = decrypted
        decrypt_s += time.perf_counter() - started
        del aggregate_blob, decrypted
        # The float64 plaintext FedAvg of the same layer, for the error.
        layer_sum = np.zeros(size, dtype=np.float64)
        for vector, weight in zip(vectors, weight_list, strict=True):
            layer_sum += weight * vector[layer]
        reference[layer] = layer_sum / total_weight
        say(f"tenseal layer {k + 1}/{n_layers}: {size:,} values, {n_clients} clients done")

    max_abs_error = float(np.max(np.abs(average - reference)))
    max_abs_value = float(np.max(np.abs(reference)))
    result = FlareRound(
        n_clients=n_clients,
        n_values=n_values,
        n_layers=n_layers,
        ciphertexts_per_client=sum(ciphertexts_for(size) for size in sizes),
        n_threads=threads,
        divide_on_server=divide_on_server,
        setup_s=setup_s,
        encrypt_s=tuple(encrypt_s),
        aggregate_s=aggregate_s,
        decrypt_s=decrypt_s,
        upload_bytes=tuple(upload_bytes),
        download_bytes=download_bytes,
        client_context_bytes=client_ctx_bytes,
        server_context_bytes=server_ctx_bytes,
        max_abs_error=max_abs_error,
        max_abs_value=max_abs_value,
        tenseal_version=str(ts.__version__),
        average=average,
    )
    say(
        f"tenseal round: {n_values:,} values, {n_clients} clients: encrypt "
        f"{result.encrypt_mean_s:.2f} s/client, aggregate {aggregate_s:.2f} s, decrypt "
        f"{decrypt_s:.2f} s, {result.upload_bytes_per_value:.1f} B/value up, "
        f"max error {max_abs_error:.2e}"
    )
    return result
