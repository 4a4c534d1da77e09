"""Real FedAvg training on the digits through the full protocol (real OpenFHE, real torch).

The paper's CNN (1,663,370 parameters), 3 clients, IID split, 2 rounds of 2 local epochs,
10 % of the coordinates (top of the sensitivity map) plus the first and last layers
encrypted.  Plaintext mode must reach 90 % test accuracy; with the same seed the
encrypted modes must land within 1.4 points of it (the only difference is the CKKS
error on the encrypted coordinates, which SGD then carries forward: about 1e-4 in
threshold mode, where flooding is sized for 2^16 shares per key, and 1e-10 single-key).
"""

from __future__ import annotations

import asyncio

import pytest

from threshold_fl.app.federation import FederationConfig, run_federation
from threshold_fl.app.rounds import RunReport
from threshold_fl.errors import ParameterError
from threshold_fl.ml.privacy import LaplaceNoise
from threshold_fl.ml.training import LocalTraining

MODES = ("plaintext", "threshold", "single-key")
CNN_PLAN = LocalTraining(epochs=2, learning_rate=0.05)
#: Sensitivity maps over 8 samples per client instead of the default 32: the map only
#: picks which coordinates are encrypted (their count, checked here, is fixed by the
#: fraction), not how the model trains; the CNN's maps were most of the set-up time.
SENSITIVITY_SAMPLES = 8


def federate(config: FederationConfig) -> RunReport:
    return asyncio.run(run_federation(config))


@pytest.fixture(scope="module")
def cnn_runs() -> dict[str, RunReport]:
    # Selective (top 10 %) on purpose: the test checks the encrypted share and stays fast.
    # Two rounds: plaintext is at about 93 % after round 2 (96 % after 3), past the 90 %
    # asked for, and round 2 already carries round 1's CKKS error through SGD.
    return {mode: federate(FederationConfig(model="cnn", mode=mode, rounds=2, fraction=0.1,
                                            training=CNN_PLAN, seed=0,
                                            sensitivity_samples=SENSITIVITY_SAMPLES))
            for mode in MODES}


def test_plaintext_fedavg_cnn_reaches_90_percent(cnn_runs: dict[str, RunReport]
                                                 ) -> None:
    report = cnn_runs["plaintext"]
    assert report.parameters == 1_663_370
    assert [record.round for record in report.rounds] == [1, 2]
    assert report.final_accuracy >= 0.90, [r.accuracy for r in report.rounds]
    assert report.rounds[-1].loss < report.rounds[0].loss


@pytest.mark.parametrize("mode", ["threshold", "single-key"])
def test_encrypted_modes_match_plaintext_accuracy(cnn_runs: dict[str, RunReport],
                                                  mode: str) -> None:
    plain, encrypted = cnn_runs["plaintext"], cnn_runs[mode]
    # Round 1 starts from the same model and data, so it must agree to the third loss
    # digit: the CKKS error (up to ~1e-4 with flooding) is all that separates the two
    # global models; a relative loss change of 1.1e-4 has been seen.
    assert encrypted.rounds[0].loss == pytest.approx(plain.rounds[0].loss, rel=1e-3)
    # Later rounds carry that error (fresh encryption noise every run) through SGD,
    # which flips a few borderline test images: gaps of 1 and 2 of the 360 have been
    # seen.  Five images (1.4 points) is the bound.
    gap = abs(encrypted.final_accuracy - plain.final_accuracy)
    assert gap <= 5 / 360, (mode, plain.final_accuracy, encrypted.final_accuracy)


def test_encrypted_fraction_and_bytes_are_reported(cnn_runs: dict[str, RunReport]
                                                   ) -> None:
    for mode, report in cnn_runs.items():
        fraction = report.rounds[-1].encrypted_fraction
        if mode == "plaintext":  # it agrees on a mask but encrypts nothing
            assert fraction == 0.0
        else:  # top 10 % plus conv1 (832) and fc2 (5,130): a little over 10 %
            assert fraction is not None and 0.10 < fraction < 0.11
        assert all(record.bytes_sent > 0 and record.seconds > 0 for record in report.rounds)
    assert cnn_runs["threshold"].bytes_sent > cnn_runs["plaintext"].bytes_sent


def test_non_iid_dirichlet_split_trains() -> None:
    report = federate(FederationConfig(model="mlp", mode="plaintext", rounds=4,
                                       split="dirichlet", alpha=0.5, seed=1,
                                       training=LocalTraining(epochs=3, learning_rate=0.1)))
    accuracies = [record.accuracy for record in report.rounds]
    assert accuracies[-1] >= 0.80 and accuracies[-1] > accuracies[0], accuracies


def test_local_dp_run_reports_its_budget() -> None:
    noise = LaplaceNoise(scale=0.05, clip=0.5)
    report = federate(FederationConfig(model="logreg", mode="threshold", rounds=2,
                                       fraction=0.3, noise=noise, seed=2,
                                       training=LocalTraining(epochs=3, learning_rate=0.1)))
    assert report.privacy is not None
    plain_coordinates = report.privacy.plain_coordinates
    # logreg: 650 coordinates; top 30 % (195) plus its only layer (all 650) are encrypted.
    assert plain_coordinates == 0 and report.privacy.epsilon_total == 0
    partial = federate(FederationConfig(model="mlp", mode="threshold", rounds=2,
                                        fraction=0.3, first_and_last=False, noise=noise,
                                        seed=2, training=LocalTraining(epochs=3,
                                                                       learning_rate=0.1)))
    assert partial.privacy is not None
    assert partial.privacy.plain_coordinates == 4_810 - 1_443
    expected = partial.privacy.plain_coordinates * 2 * noise.clip / noise.scale
    assert partial.privacy.epsilon_per_round == pytest.approx(expected)
    assert partial.privacy.epsilon_total == pytest.approx(2 * expected)
    assert partial.final_accuracy > 0.5  # noisy, but it still learns


@pytest.mark.parametrize(("options", "message"), [
    ({"model": "vgg"}, "unknown model"), ({"split": "random"}, "unknown split"),
    ({"clients": 1}, "clients"), ({"mode": "secure"}, "unknown mode"),
    ({"fraction": 1.5}, "fraction"),
])
def test_bad_configs_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises((ParameterError,), match=message):
        FederationConfig(**options)  # type: ignore[arg-type]
