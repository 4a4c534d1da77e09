"""Mask fraction 1 (the default: everything encrypted) has no mask agreement.

Every party takes the all-ones mask from the manifest: after key agreement the aggregator
announces round 1 at once, no sensitivity map is computed, encrypted or decrypted, and a
mask-agreement message is refused as one that cannot occur in such a session.  Real
machines and real OpenFHE on the harness's network; a fraction below 1 is the control.
"""

from __future__ import annotations

import pytest
from protocol_harness import (
    AGGREGATOR,
    Network,
    assert_models_match_fedavg,
    build_manifest,
    identity,
    run_until,
    snapshot,
)
from test_protocol_dropouts import key_epochs

from protocols import Mode
from protocols.aggregator import AggregatorState
from protocols.client import ClientState
from protocols.codec import encode_message
from protocols.events import MaskAgreed, SensitivityNeeded
from protocols.messages import (
    Body,
    Header,
    MaskConfirm,
    MaskStart,
    Message,
    SensitivityUpload,
    Stage,
)
from threshold_fl.crypto import threshold_params
from threshold_fl.errors import UnexpectedMessage
from threshold_fl.ml.mask import EncryptionMask

LENGTH = 40
MASK_STAGE = {"MaskStart", "SensitivityUpload", "MaskConfirm", "SensitivityNeeded"}
ALL = ("client1", "client2", "client3")


def assert_fedavg(net: Network, rounds: int) -> None:
    assert [e.round for e in net.completed_rounds(AGGREGATOR)] == list(range(1, rounds + 1))
    assert assert_models_match_fedavg(net, ALL) == [ALL] * rounds


@pytest.mark.parametrize("mode", list(Mode), ids=lambda m: m.value)
def test_no_mask_agreement_at_fraction_one(mode: Mode) -> None:
    """No mask-stage message or event at all; every party announces the all-ones mask
    once; the rounds are FedAvg.  The control (fraction 0.25) runs the stage."""
    full = EncryptionMask.full(LENGTH)
    for fraction in (1.0, 0.25):
        net = Network(build_manifest(3, mode=mode, length=LENGTH, rounds=3, fraction=fraction))
        net.start()
        net.run()
        assert net.rejections == [] and net.finished(AGGREGATOR)
        kinds = {kind for _, kind, _ in net.history}
        kinds |= {type(e).__name__ for events in net.events.values() for e in events}
        announced = {name: [e.mask for e in net.events[name] if isinstance(e, MaskAgreed)]
                     for name in (AGGREGATOR, *ALL)}
        assert all(len(masks) == 1 for masks in announced.values()), announced
        if fraction == 1.0:
            assert not kinds & MASK_STAGE, kinds & MASK_STAGE
            assert all(masks == [full] for masks in announced.values())
        else:
            assert kinds >= MASK_STAGE
            assert all(masks[0].count < LENGTH for masks in announced.values())
        assert_fedavg(net, 3)


def test_the_all_ones_mask_persists_across_key_rotations() -> None:
    """Q = 2 decryption shares per key: each round's decryption (one ciphertext, room for
    a retry) needs a new key epoch, and no rotation brings the mask stage back."""
    params = threshold_params(3).with_changes(decryption_queries=2)
    net = Network(build_manifest(3, length=LENGTH, rounds=3, fraction=1.0, params=params))
    net.start()
    net.run()
    assert net.rejections == [] and key_epochs(net) == 3
    assert not {kind for _, kind, _ in net.history} & MASK_STAGE
    assert [type(e).__name__ for e in net.events["client1"]].count("MaskAgreed") == 1
    assert_fedavg(net, 3)


def test_key_agreement_restarted_by_a_dropout_goes_straight_to_round_one() -> None:
    """client3 vanishes instead of confirming the key: key agreement restarts without it
    (epoch 2), then round 1 starts at once; one MaskAgreed, the survivors' FedAvg."""
    net = Network(build_manifest(3, length=LENGTH, rounds=2, fraction=1.0))

    def vanish(sender: str, recipient: str, kind: str, now: float) -> list[float]:
        if (sender, kind) == ("client3", "KeyConfirm"):
            net.kill("client3")
            return []
        return [0.0]

    net.faults = vanish
    net.start()
    net.run()
    assert net.finished(AGGREGATOR) and key_epochs(net) == 1  # epoch 1 was never agreed
    assert net.aggregator._epoch == 2
    assert not {kind for _, kind, _ in net.history} & MASK_STAGE
    assert [type(e).__name__ for e in net.events[AGGREGATOR]].count("MaskAgreed") == 1
    contributors = assert_models_match_fedavg(net, ["client1"])
    assert contributors and set(contributors) == {("client1", "client2")}


def _signed(net: Network, sender: str, recipient: str, step: tuple[Stage, int, int, int],
            body: Body) -> bytes:
    header = Header(net.manifest.session, sender, recipient, *step)
    return encode_message(identity(sender), Message(header, body))


def _refused(machine: object, data: bytes, now: float) -> str:
    before = snapshot(machine)
    with pytest.raises(UnexpectedMessage, match="cannot occur in this session") as caught:
        machine.receive(data, now)  # type: ignore[attr-defined]
    assert snapshot(machine) == before
    return str(caught.value)


def _keys_confirmed(fraction: float) -> tuple[Network, bytes]:
    """client2 has confirmed the key (and the aggregator knows the group check), and a
    MaskStart with the real key for it: what an aggregator at a fraction below 1 sends."""
    net = Network(build_manifest(3, length=LENGTH, fraction=fraction))
    client, aggregator = net.clients["client2"], net.aggregator
    net.start()
    assert run_until(net, lambda: client.state is ClientState.KEYS_CONFIRMED
                     and aggregator._group_check is not None)
    assert aggregator._key_id is not None and aggregator._group_check is not None
    body = MaskStart(aggregator._key_id, aggregator._group_check, 0.5)
    return net, _signed(net, AGGREGATOR, "client2", (Stage.MASK, 1, 0, 1), body)


def test_mask_stage_messages_are_refused_at_fraction_one() -> None:
    """The MaskStart is refused by a client waiting for round 1; a SensitivityUpload or
    MaskConfirm by the aggregator in round 1's upload; the session goes on."""
    net, data = _keys_confirmed(1.0)
    reason = _refused(net.clients["client2"], data, net.now)
    assert "mask fraction 1" in reason and "'aggregator'" in reason
    aggregator = net.aggregator
    assert run_until(net, lambda: aggregator.state is AggregatorState.ROUND_UPLOAD)
    full = EncryptionMask.full(LENGTH)
    for body in (SensitivityUpload((b"x" * 64,)), MaskConfirm(full.bits(), full.digest())):
        data = _signed(net, "client1", AGGREGATOR, (Stage.MASK, 1, 0, 1), body)
        assert type(body).__name__ in _refused(aggregator, data, net.now)
    net.run()
    assert net.finished(AGGREGATOR) and net.rejections == []


def test_the_same_mask_start_is_taken_below_fraction_one() -> None:
    """The control: at fraction 0.25 that MaskStart asks for the sensitivity map."""
    net, data = _keys_confirmed(0.25)
    client = net.clients["client2"]
    step = client.receive(data, net.now)
    assert client.state is ClientState.MASK_COMPUTING
    assert [type(e) for e in step.events] == [SensitivityNeeded]
