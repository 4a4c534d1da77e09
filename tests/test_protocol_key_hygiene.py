"""A client's secrets are zeroed, not merely dropped, when their key epoch ends: a new
epoch, the end of the session, an abort (its own or the aggregator's).  Real key
agreements on real OpenFHE keys, driven through the harness."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from protocol_harness import AGGREGATOR, Network, build_manifest, run_until

from protocols import client as client_module
from protocols.client import ClientMachine, ClientState
from protocols.events import KeyAgreed
from threshold_fl.crypto import noise, threshold_params

CLIENTS = ("client1", "client2", "client3")


def secret_arrays(client: ClientMachine) -> list[np.ndarray]:
    """The arrays of the client's current epoch that hold secrets: the Shamir shares it
    holds and its threshold key."""
    keys = client._keys
    arrays = [limb for _, limbs in keys.held_shares.values() for limb in limbs.values()]
    if keys.threshold_key is not None:
        arrays += list(keys.threshold_key.limbs.values())
    return arrays


def assert_wiped(arrays: list[np.ndarray], client: ClientMachine) -> None:
    assert arrays and all(not array.any() for array in arrays), "a secret was left in memory"
    keys = client._keys
    assert keys.threshold_key is None and not keys.held_shares
    assert keys.group_key is None and keys.noise_seed is None


def test_the_end_of_the_session_wipes_the_threshold_key() -> None:
    net = Network(build_manifest(3, rounds=1))
    client = net.clients["client1"]
    net.start()
    assert run_until(net, lambda: client.state is ClientState.KEYS_CONFIRMED)
    arrays = secret_arrays(client)
    assert arrays and all(array.any() for array in arrays)  # a real key, not zeros
    net.run()
    assert net.finished("client1")
    assert_wiped(arrays, client)


def test_a_new_key_epoch_wipes_the_old_one() -> None:
    """Q = 3: the mask and round 1 spend two shares, round 2 needs room for two more, so
    the keys rotate; when the second epoch is agreed, the first one's key is zeros."""
    params = threshold_params(3).with_changes(decryption_queries=3)
    net = Network(build_manifest(3, rounds=2, params=params))
    kept: dict[int, list[np.ndarray]] = {}
    checked: list[int] = []

    def hook(net: Network, name: str, event: Any) -> None:
        if name != "client1" or not isinstance(event, KeyAgreed):
            return
        client = net.clients[name]
        if event.epoch - 1 in kept:
            old = kept[event.epoch - 1]
            assert old and all(not array.any() for array in old)
            checked.append(event.epoch)
        kept[event.epoch] = secret_arrays(client)
        assert all(array.any() for array in kept[event.epoch])

    net.hooks.append(hook)
    net.start()
    net.run()
    assert net.finished(AGGREGATOR) and checked == [2]


def test_leaving_during_key_agreement_wipes_the_shares_held() -> None:
    net = Network(build_manifest(3))
    client = net.clients["client2"]
    net.start()
    assert run_until(net, lambda: len(client._keys.held_shares) >= 2)
    assert client.state is ClientState.KEY_AGREEMENT
    arrays = secret_arrays(client)
    client.abort("the application failed", net.now)
    assert client.state is ClientState.ABORTED
    assert_wiped(arrays, client)


def test_the_aggregators_abort_wipes_the_keys() -> None:
    """Two of three clients vanish after key agreement: too few for t = 2, the aggregator
    aborts and tells the survivor, who wipes its key."""
    net = Network(build_manifest(3))
    survivor = net.clients["client1"]
    net.start()
    assert run_until(net, lambda: all(
        net.clients[name].state is ClientState.KEYS_CONFIRMED for name in CLIENTS))
    arrays = secret_arrays(survivor)
    net.kill("client2")
    net.kill("client3")
    net.run()
    reason = net.aborted("client1")
    assert net.aborted(AGGREGATOR) and reason is not None and "fewer than" in reason
    assert survivor.state is ClientState.ABORTED
    assert_wiped(arrays, survivor)


def test_the_shamir_shares_in_bytes_are_wiped_after_sealing_and_opening(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of 3 clients seals 2 deliveries (the packed map and the share frame are
    wiped) and opens 2 (the plaintext and the share frame): 24 zeroed byte strings, and
    the key agreement still succeeds (the group key, kept, is not among them)."""
    wiped: list[Any] = []

    def record(value: Any) -> None:
        noise.wipe(value)
        wiped.append(value)

    monkeypatch.setattr(client_module, "wipe", record)
    net = Network(build_manifest(3))
    net.start()
    assert run_until(net, lambda: all(
        net.clients[name].state is ClientState.KEYS_CONFIRMED for name in CLIENTS))
    assert len(wiped) == 24 and all(isinstance(w, bytes) and len(w) > 1000 for w in wiped)
    assert all(w == bytes(len(w)) for w in wiped)
    assert len({net.clients[name]._keys.group_check() for name in CLIENTS}) == 1
