"""End to end in memory with real OpenFHE: every mode, 3 and 5 clients, 3 rounds,
selective fraction p in {0, 0.1, 1}; each round's global model against plaintext
FedAvg of the same updates."""

from __future__ import annotations

import numpy as np
import pytest
from protocol_harness import AGGREGATOR, Network, build_manifest, crypto_bound

from protocols import Mode

LENGTH = 60


def check_rounds(net: Network, rounds: int, tolerance: float) -> None:
    completed = net.completed_rounds(AGGREGATOR)
    assert [event.round for event in completed] == list(range(1, rounds + 1))
    for event in completed:
        expected = net.expected_global(event.round, event.contributors)
        models = [
            next(r.model for r in net.completed_rounds(name) if r.round == event.round)
            for name in net.clients
        ]
        for model in models:
            assert model is not None
            assert np.abs(model - expected).max() <= tolerance
            np.testing.assert_array_equal(model, models[0])  # every client holds the same


@pytest.mark.parametrize("fraction", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("clients", [3, 5])
@pytest.mark.parametrize("mode", list(Mode))
def test_every_round_is_fedavg(mode: Mode, clients: int, fraction: float) -> None:
    manifest = build_manifest(clients, mode=mode, length=LENGTH, rounds=3, fraction=fraction,
                              first_and_last=fraction > 0)
    net = Network(manifest)
    net.start()
    net.run()
    assert net.rejections == []
    assert all(net.finished(name) for name in net.machines if name != "authority")
    mask = net.aggregator.mask
    assert mask is not None
    expected_count = 0 if fraction == 0 else min(LENGTH, int(np.ceil(fraction * LENGTH)) + 4)
    assert mask.count <= expected_count and (fraction == 0) == (mask.count == 0)
    if mode is Mode.PLAINTEXT:
        # Exact up to the float32 in which plain coordinates travel (one ulp of the average).
        for event in net.completed_rounds(AGGREGATOR):
            expected = net.expected_global(event.round, event.contributors)
            for name in net.clients:
                model = next(r.model for r in net.completed_rounds(name) if r.round == event.round)
                np.testing.assert_array_max_ulp(
                    model.astype(np.float32), expected.astype(np.float32), maxulp=1
                )
        check_rounds(net, 3, 1e-7)
    else:
        check_rounds(net, 3, crypto_bound(net))


def test_weights_stay_at_the_aggregator_and_are_applied() -> None:
    manifest = build_manifest(3, length=LENGTH, rounds=1, fraction=0.5)
    weights = {"client1": 5.0, "client2": 1.0, "client3": 2.0}
    net = Network(manifest, weights=weights)
    net.start()
    net.run()
    event = net.completed_rounds(AGGREGATOR)[0]
    updates = net.uploads[1]
    expected = sum(weights[n] * updates[n] for n in event.contributors) / sum(weights.values())
    model = net.completed_rounds("client1")[0].model
    assert model is not None and np.abs(model - expected).max() <= crypto_bound(net)
    # No message a client receives carries the weights: they never leave the aggregator.
    for name, client in net.clients.items():
        assert not hasattr(client, "_weights"), name
