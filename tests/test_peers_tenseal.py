"""The NVIDIA FLARE baseline (TenSEAL CKKS, FLARE's defaults): real TenSEAL, small vectors.

TenSEAL is in the ``dev`` extra, so these tests run (never skip); the missing-TenSEAL
path is simulated by hiding the module from the import system.
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from threshold_fl.errors import EnvironmentError_, ParameterError, ThresholdFLError
from threshold_fl.peers.tenseal_flare import (
    FLARE_COEFF_MOD_BIT_SIZES,
    FLARE_POLY_MODULUS_DEGREE,
    FLARE_SCALE_BITS,
    FLARE_SLOTS,
    FlareRound,
    TenSEALUnavailableError,
    ciphertexts_for,
    run_flare_round,
    tenseal_available,
    tenseal_version,
)

N = FLARE_POLY_MODULUS_DEGREE
SCALE = 2.0**FLARE_SCALE_BITS
# A fresh CKKS ciphertext's noise (Gaussian, sigma 3.2, times a ternary secret) decodes to
# about 2^-30 per slot at scale 2^40; a few additions and one rescale stay well below
# 2^-25 for inputs of magnitude about 1.
NOISE_BOUND = 2.0**-25
# One limb holds residues below q_j < 2^bits; SEAL writes each coefficient in a 64-bit
# word and may compress the words (zstd), never below the residues' entropy.
_HEADER_SLACK = 4096  # protobuf and SEAL headers of one ciphertext, generously


def _coeff_moduli() -> list[int]:
    sealapi = importlib.import_module("tenseal.sealapi")
    return [m.value() for m in sealapi.CoeffModulus.Create(N, list(FLARE_COEFF_MOD_BIT_SIZES))]


def _rescale_bias() -> float:
    """TenSEAL resets the scale to 2^40 after rescaling by q_1 (a prime near 2^40)."""
    return abs(SCALE / _coeff_moduli()[1] - 1.0)


def _ciphertext_byte_range(limbs: int) -> tuple[int, int]:
    """Plausible serialized size of one 2-polynomial ciphertext with *limbs* RNS limbs."""
    bits = FLARE_COEFF_MOD_BIT_SIZES[:limbs]  # the data limbs, highest level first
    smallest = 2 * N * sum(bits) // 8
    largest = 2 * N * 8 * limbs + _HEADER_SLACK
    return smallest, largest


def _weighted_average(
    updates: list[npt.NDArray[np.float64]], weights: list[float]
) -> npt.NDArray[np.float64]:
    total = np.zeros_like(updates[0])
    for update, weight in zip(updates, weights, strict=True):
        total += weight * update
    return total / sum(weights)


def _updates(
    rng: np.random.Generator, n_clients: int, n_values: int
) -> list[npt.NDArray[np.float64]]:
    return [rng.uniform(-1.0, 1.0, size=n_values) for _ in range(n_clients)]


# Layers below, at and above one ciphertext's 4,096 slots.
LAYERS = [3, FLARE_SLOTS + 1, 50, FLARE_SLOTS]


def test_tenseal_is_installed_for_the_test_suite() -> None:
    assert tenseal_available()
    assert tenseal_version().count(".") >= 2


@pytest.mark.parametrize("divide_on_server", [True, False])
def test_decrypted_average_matches_the_weighted_plaintext_average(
    rng: np.random.Generator, divide_on_server: bool
) -> None:
    updates = _updates(rng, 3, sum(LAYERS))
    weights = [1.0, 2.5, 4.0]
    expected = _weighted_average(updates, weights)

    result = run_flare_round(updates, weights, LAYERS, divide_on_server=divide_on_server)

    error = np.abs(result.average - expected)
    magnitude = float(np.max(np.abs(expected)))
    # Scaling the sum by 1/sum(w) on the server costs TenSEAL a systematic relative
    # error |2^40/q_1 - 1| (about 6.7e-7); adding only costs the encryption noise.
    bias = _rescale_bias() if divide_on_server else 0.0
    assert float(np.max(error)) <= bias * magnitude + NOISE_BOUND
    assert result.max_abs_error == pytest.approx(float(np.max(error)), rel=1e-12, abs=1e-18)
    assert result.max_abs_value == pytest.approx(magnitude)
    assert result.max_rel_error <= bias + NOISE_BOUND / magnitude
    assert result.average.shape == (sum(LAYERS),)


def test_server_division_shows_tenseals_rescale_bias(rng: np.random.Generator) -> None:
    # The documented systematic error is real: the relative error sits at the bias.
    updates = [rng.uniform(0.5, 1.0, size=200) for _ in range(2)]
    result = run_flare_round(updates, [1.0, 1.0], [200], divide_on_server=True)
    expected = _weighted_average(updates, [1.0, 1.0])
    relative = result.average / expected - 1.0
    assert float(np.median(np.abs(relative))) == pytest.approx(_rescale_bias(), rel=0.05)


def test_one_client_round_returns_its_own_update(rng: np.random.Generator) -> None:
    update = rng.normal(size=10)
    result = run_flare_round([update], [3.0], [4, 6])
    assert np.max(np.abs(result.average - update)) <= _rescale_bias() * np.max(
        np.abs(update)
    ) + NOISE_BOUND


def test_ciphertext_count_follows_the_slot_count() -> None:
    ts = importlib.import_module("tenseal")
    context = ts.context(
        ts.SCHEME_TYPE.CKKS, poly_modulus_degree=N,
        coeff_mod_bit_sizes=list(FLARE_COEFF_MOD_BIT_SIZES),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    context.global_scale = SCALE
    for size in (1, FLARE_SLOTS - 1, FLARE_SLOTS, FLARE_SLOTS + 1, 3 * FLARE_SLOTS + 7):
        vector = ts.ckks_vector(context, np.zeros(size))
        assert len(vector.ciphertext()) == ciphertexts_for(size), size


@pytest.mark.parametrize("divide_on_server", [True, False])
def test_bytes_are_consistent_with_the_ciphertext_count(
    rng: np.random.Generator, divide_on_server: bool
) -> None:
    updates = _updates(rng, 2, sum(LAYERS))
    result = run_flare_round(updates, [1.0, 1.0], LAYERS, divide_on_server=divide_on_server)

    count = sum(ciphertexts_for(size) for size in LAYERS)
    assert count == 1 + 2 + 1 + 1
    assert result.ciphertexts_per_client == count
    # Uploads are fresh: two limbs (60 + 40 bits; the last 40-bit prime is the special one).
    low, high = _ciphertext_byte_range(limbs=2)
    for sent in result.upload_bytes:
        assert count * low <= sent <= count * high
    # The server's scalar product is rescaled away to one limb; adding alone keeps two.
    low, high = _ciphertext_byte_range(limbs=1 if divide_on_server else 2)
    assert count * low <= result.download_bytes <= count * high
    assert result.upload_bytes_per_value == pytest.approx(
        sum(result.upload_bytes) / 2 / sum(LAYERS)
    )
    assert result.download_bytes_per_value == pytest.approx(
        result.download_bytes / sum(LAYERS)
    )


def test_a_full_ciphertext_costs_about_64_bytes_per_value_or_less(
    rng: np.random.Generator,
) -> None:
    # 4,096 values in one two-limb ciphertext: at most 2 * 2 * 8 * N raw bytes.
    result = run_flare_round(_updates(rng, 1, FLARE_SLOTS), [1.0], [FLARE_SLOTS])
    low, high = _ciphertext_byte_range(limbs=2)
    assert low / FLARE_SLOTS <= result.upload_bytes_per_value <= high / FLARE_SLOTS


def test_one_ckks_vector_per_layer_wastes_partial_ciphertexts(
    rng: np.random.Generator,
) -> None:
    # The same 8,194 values as one layer need 3 ciphertexts, as two layers 4.
    updates = _updates(rng, 1, 2 * FLARE_SLOTS + 2)
    whole = run_flare_round(updates, [1.0], [2 * FLARE_SLOTS + 2])
    split = run_flare_round(updates, [1.0], [FLARE_SLOTS + 1, FLARE_SLOTS + 1])
    assert (whole.ciphertexts_per_client, split.ciphertexts_per_client) == (3, 4)
    assert split.upload_bytes[0] > whole.upload_bytes[0]


def test_figures_are_complete_and_json_ready(rng: np.random.Generator) -> None:
    messages: list[str] = []
    result = run_flare_round(
        _updates(rng, 3, 20), [1, 2, 3], [15, 5], n_threads=1, progress=messages.append
    )
    assert isinstance(result, FlareRound)
    assert (result.n_clients, result.n_values, result.n_layers) == (3, 20, 2)
    assert result.n_threads == 1 and result.divide_on_server
    assert len(result.encrypt_s) == len(result.upload_bytes) == 3
    for seconds in (*result.encrypt_s, result.aggregate_s, result.decrypt_s, result.setup_s):
        assert seconds >= 0.0
    assert result.encrypt_total_s == pytest.approx(sum(result.encrypt_s))
    assert result.encrypt_mean_s == pytest.approx(result.encrypt_total_s / 3)
    assert result.he_compute_s == pytest.approx(
        result.encrypt_total_s + result.aggregate_s + result.decrypt_s
    )
    assert result.client_context_bytes > 0 and result.server_context_bytes > 0
    assert result.tenseal_version == tenseal_version()
    figures = result.as_dict()
    assert "average" not in figures
    assert json.loads(json.dumps(figures))["n_values"] == 20
    assert figures["coeff_mod_bit_sizes"] == [60, 40, 40]
    assert any("layer 2/2" in message for message in messages)
    assert "average" not in repr(result)


def test_tenseals_stdout_warning_for_long_vectors_is_silenced(
    rng: np.random.Generator, capfd: pytest.CaptureFixture[str]
) -> None:
    run_flare_round(_updates(rng, 1, FLARE_SLOTS + 1), [1.0], [FLARE_SLOTS + 1])
    print("stdout still works")
    out, _ = capfd.readouterr()
    assert out == "stdout still works\n"


# ---------------------------------------------------------------- validation

def _bad_inputs() -> list[tuple[str, dict[str, Any], str]]:
    ok = [np.zeros(6), np.ones(6)]
    return [
        ("no updates", {"updates": [], "weights": [], "layer_sizes": [6]}, "at least one"),
        ("weights count", {"updates": ok, "weights": [1.0], "layer_sizes": [6]}, "one weight"),
        ("sum too small", {"updates": ok, "weights": [1, 1], "layer_sizes": [2, 3]},
         "sum to 5"),
        ("sum too large", {"updates": ok, "weights": [1, 1], "layer_sizes": [6, 1]},
         "sum to 7"),
        ("zero layer", {"updates": ok, "weights": [1, 1], "layer_sizes": [6, 0]}, "layer size 1"),
        ("negative layer", {"updates": ok, "weights": [1, 1], "layer_sizes": [7, -1]},
         "layer size 1"),
        ("float layer", {"updates": ok, "weights": [1, 1], "layer_sizes": [3.0, 3]},
         "layer size 0"),
        ("bool layer", {"updates": ok, "weights": [1, 1], "layer_sizes": [True, 5]},
         "layer size 0"),
        ("no layers", {"updates": ok, "weights": [1, 1], "layer_sizes": []}, "empty"),
        ("lengths differ", {"updates": [np.zeros(6), np.zeros(5)], "weights": [1, 1],
                            "layer_sizes": [6]}, "same length"),
        ("2-D update", {"updates": [np.zeros((2, 3))], "weights": [1], "layer_sizes": [6]},
         "1-D"),
        ("NaN update", {"updates": [np.array([1.0, math.nan])], "weights": [1],
                        "layer_sizes": [2]}, "NaN"),
        ("text update", {"updates": [np.array(["a", "b"])], "weights": [1],
                         "layer_sizes": [2]}, "real numbers"),
        ("zero weight", {"updates": ok, "weights": [1, 0], "layer_sizes": [6]}, "weight 1"),
        ("NaN weight", {"updates": ok, "weights": [math.nan, 1], "layer_sizes": [6]},
         "weight 0"),
        ("bool weight", {"updates": ok, "weights": [True, 1], "layer_sizes": [6]}, "weight 0"),
        ("threads", {"updates": ok, "weights": [1, 1], "layer_sizes": [6], "n_threads": 0},
         "n_threads"),
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"), [(k, m) for _, k, m in _bad_inputs()], ids=[i for i, _, _ in _bad_inputs()]
)
def test_invalid_inputs_raise_parameter_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ParameterError, match=match):
        run_flare_round(**kwargs)


# ---------------------------------------------------------------- without TenSEAL

def test_missing_tenseal_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes `import tenseal` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "tenseal", None)
    assert not tenseal_available()
    with pytest.raises(TenSEALUnavailableError, match=r"threshold-fl\[bench\]") as caught:
        run_flare_round([np.zeros(4)], [1.0], [4])
    assert isinstance(caught.value, EnvironmentError_)
    assert isinstance(caught.value, ThresholdFLError)
    with pytest.raises(TenSEALUnavailableError, match="pip install"):
        tenseal_version()


def test_inputs_are_validated_before_tenseal_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tenseal", None)
    with pytest.raises(ParameterError, match="sum to"):
        run_flare_round([np.zeros(4)], [1.0], [3])
