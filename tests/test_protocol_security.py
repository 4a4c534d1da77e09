"""Security properties of the protocol and adversarial messages, on real OpenFHE.

Each adversarial message must be rejected with a clear MessageRejected subclass and
leave the receiving machine exactly as it was."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from protocol_harness import (
    AGGREGATOR,
    Network,
    build_manifest,
    identity,
    run_until,
    snapshot,
)

from protocols import make_manifest
from protocols.client import ClientState
from protocols.codec import decode_message, encode_message
from protocols.events import Aborted
from protocols.fusion import decryption_set
from protocols.messages import (
    DecryptionShare,
    DecryptRequest,
    Fused,
    Header,
    Message,
)
from protocols.protection import implausible
from threshold_fl.crypto.keys import PartyKeys, SecretKey, ThresholdSecret
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.crypto.shares import KeyLimbs, decode_sums
from threshold_fl.crypto.threshold import ThresholdKey, blind_fusion, unpad
from threshold_fl.crypto.vectors import PartialDecryption
from threshold_fl.crypto.wire import PolynomialRole, decode_polynomials, encode_polynomials
from threshold_fl.errors import (
    AuthenticationError,
    DuplicateMessage,
    ForgedMessage,
    MalformedMessage,
    MessageRejected,
    StaleMessage,
)
from threshold_fl.identity import Identity
from threshold_fl.sealing import open_from


def assert_rejected(machine: Any, data: bytes, error: type[MessageRejected], now: float) -> str:
    before = snapshot(machine)
    with pytest.raises(error) as caught:
        machine.receive(data, now)
    assert snapshot(machine) == before, "a rejected message changed the machine"
    return str(caught.value)


Probe = Callable[[Network, str, bytes], None]


class ProbingNetwork(Network):
    """Calls ``before(net, recipient, data)`` right before each delivery and
    ``probe(net, recipient, data)`` right after each successful one."""

    probe: Probe = staticmethod(lambda net, r, d: None)
    before: Probe = staticmethod(lambda net, r, d: None)

    def _deliver(self, pending: Any) -> None:
        if pending.recipient not in self.dead:
            self.before(self, pending.recipient, pending.data)
        count = len(self.rejections)
        super()._deliver(pending)
        if len(self.rejections) == count and pending.recipient not in self.dead:
            self.probe(self, pending.recipient, pending.data)


def kind_of(net: Network, data: bytes) -> Message:
    return decode_message(data, net.manifest.directory)


def first_of_round_one(net: Network, data: bytes, kind: str, seen: object) -> Message | None:
    """The message in *data* if it is a round-1 *kind* and nothing was *seen* yet."""
    message = kind_of(net, data)
    if message.kind != kind or seen or message.header.round != 1:
        return None
    return message


def run_probing(probe: Probe | None = None, *, before: Probe | None = None,
                **options: Any) -> ProbingNetwork:
    net = ProbingNetwork(build_manifest(3, rounds=2, **options))
    if probe is not None:
        net.probe = probe  # type: ignore[method-assign]
    if before is not None:
        net.before = before  # type: ignore[method-assign]
    net.start()
    net.run()
    assert net.aborted(AGGREGATOR) is None
    return net


def test_duplicate_messages_are_rejected_everywhere_without_effect() -> None:
    """Every message delivered a second time is rejected and changes nothing, at every
    step (this covers a second decryption share from the same member, and a second
    request to decrypt the same attempt)."""
    seen: list[str] = []

    def probe(net: Network, recipient: str, data: bytes) -> None:
        machine = net.machines[recipient]
        if machine.state in machine.TERMINAL:
            return
        message = kind_of(net, data)
        try:
            before = snapshot(machine)
            machine.receive(data, net.now)
        except MessageRejected as exc:
            assert snapshot(machine) == before
            seen.append(f"{message.kind}:{type(exc).__name__}")
            return
        raise AssertionError(f"{recipient} accepted a duplicate {message.kind}")

    run_probing(probe)
    assert "DecryptionShare:DuplicateMessage" in seen  # one share per member and set
    assert "DecryptRequest:DuplicateMessage" in seen  # one share per attempt
    assert "UpdateUpload:DuplicateMessage" in seen
    assert "KeyConfirm:DuplicateMessage" in seen


def test_replay_from_an_earlier_round_is_stale() -> None:
    replays: list[str] = []

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if recipient != AGGREGATOR or message.kind != "UpdateUpload" or message.header.round != 2:
            return
        if net.aggregator.state.name != "ROUND_UPLOAD":
            return
        old = [d for sender, _, d in net.history
               if sender == message.header.sender and kind_of(net, d).kind == "UpdateUpload"
               and kind_of(net, d).header.round == 1]
        for data_1 in old:
            replays.append(assert_rejected(net.aggregator, data_1, StaleMessage, net.now))

    run_probing(probe)
    assert replays and "round 1" in replays[0]


def test_forged_sender_bad_signature_wrong_session_and_outsider() -> None:
    checked: list[str] = []
    other = make_manifest(
        session="another-session", aggregator=identity(AGGREGATOR).public,
        clients=[identity(f"client{i}").public for i in (1, 2, 3)], model_length=40,
    )

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if recipient != AGGREGATOR or message.kind != "UpdateUpload" or checked:
            return
        machine = net.aggregator
        signed_by_other = encode_message(identity("client3"), Message(
            Header(**{**vars(message.header), "sender": "client3"}), message.body))
        forged = signed_by_other.replace(b"client3", message.header.sender.encode(), 1)
        checked.append(assert_rejected(machine, forged, ForgedMessage, net.now))
        tampered = data[:-1] + bytes([data[-1] ^ 1])
        checked.append(assert_rejected(machine, tampered, ForgedMessage, net.now))
        header = Header(**{**vars(message.header), "session": other.session})
        wrong_session = encode_message(identity(message.header.sender), Message(header,
                                                                                message.body))
        checked.append(assert_rejected(machine, wrong_session, StaleMessage, net.now))
        stranger = Identity.from_seed("mallory", bytes(32))
        outsider = encode_message(stranger, Message(
            Header(**{**vars(message.header), "sender": "mallory"}), message.body))
        checked.append(assert_rejected(machine, outsider, ForgedMessage, net.now))

    run_probing(probe)
    assert len(checked) == 4
    assert "bad signature" in checked[0] and "bad signature" in checked[1]
    assert "another-session" in checked[2]
    assert "not in the manifest" in checked[3]


def resigned(net: Network, message: Message, signer: str, *, body: Any = None,
             **header: Any) -> bytes:
    """``message`` with header fields changed and/or another body, signed by ``signer``
    (its sender)."""
    fields = {**vars(message.header), "sender": signer, **header}
    return encode_message(identity(signer), Message(Header(**fields),
                                                     message.body if body is None else body))


def test_forged_misdirected_and_stale_decryption_shares_are_refused() -> None:
    """When a member's share reaches the aggregator, a share in its name from anyone
    else, or for another set, aggregate, attempt or round, or carrying other frames
    than shares, is refused and changes nothing; so is a share once the set is done."""
    outcomes: dict[str, str] = {}

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if (recipient != AGGREGATOR or message.kind != "DecryptionShare" or outcomes
                or message.header.round != 1):
            return
        body = message.body
        assert isinstance(body, DecryptionShare)
        machine, now, sender = net.aggregator, net.now, message.header.sender
        decryption = machine._decryption
        assert decryption is not None and sender in decryption.members
        others = [m for m in decryption.members if m != sender]  # yet to send theirs
        outsider = next(n for n in net.clients if n not in decryption.members)
        member = others[0]
        everyone = tuple(sorted(net.clients))
        attempt = message.header.attempt
        requests = [kind_of(net, d) for _, kind, d in net.history if kind == "DecryptRequest"]
        c1_frames = requests[-1].body.c1  # type: ignore[union-attr]

        def share(**changes: Any) -> DecryptionShare:
            return DecryptionShare(**{**vars(body), **changes})

        cases = {
            # the same share, re-signed by a live client outside the set
            "non-member": (resigned(net, message, outsider), ForgedMessage),
            # the member that has not answered yet: another set, aggregate, step
            "other-set": (resigned(net, message, member, body=share(members=everyone)),
                          MalformedMessage),
            "other-c1": (resigned(net, message, member, body=share(
                c1_digest=hashlib.sha256(b"another aggregate").hexdigest())),
                MalformedMessage),
            "next-attempt": (resigned(net, message, member, attempt=attempt + 1),
                             StaleMessage),
            "earlier-attempt": (resigned(net, message, member, attempt=attempt - 1),
                                StaleMessage),
            "earlier-round": (resigned(net, message, member, round=message.header.round - 1),
                              StaleMessage),
            # the c1 it was sent, echoed back as a share (another role of frames)
            "c1-as-share": (resigned(net, message, member, body=share(shares=c1_frames)),
                            MalformedMessage),
            "again": (data, DuplicateMessage),
        }
        for label, (forged, error) in cases.items():
            outcomes[label] = assert_rejected(machine, forged, error, now)

    net = run_probing(probe)
    assert set(outcomes) == {"non-member", "other-set", "other-c1", "next-attempt",
                             "earlier-attempt", "earlier-round", "c1-as-share", "again"}
    assert "not a live member of this attempt's decryption set" in outcomes["non-member"]
    assert "another set or aggregate" in outcomes["other-set"]
    assert "another set or aggregate" in outcomes["other-c1"]
    # The session was not disturbed: nobody was dropped.
    assert net.finished(AGGREGATOR) and not net.aggregator.dropped


def test_a_decryption_share_must_be_addressed_to_the_aggregator() -> None:
    """Like an upload or a confirmation, a share signed for another recipient (every
    client, or one of them) is refused before the member's real one arrives."""
    problems: list[str] = []

    def check_before(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if recipient != AGGREGATOR or message.kind != "DecryptionShare" or problems or (
                message.header.round != 1):
            return
        sender = message.header.sender
        for addressed in ("*", next(n for n in net.clients if n != sender)):
            forged = resigned(net, message, sender, recipient=addressed)
            before = snapshot(net.aggregator)
            try:
                net.aggregator.receive(forged, net.now)
            except ForgedMessage:
                assert snapshot(net.aggregator) == before
                continue
            except MessageRejected as exc:
                problems.append(f"addressed to {addressed!r}: {type(exc).__name__}: {exc}")
            else:
                problems.append(f"addressed to {addressed!r}: accepted")
            return  # the member's share is taken (or the machine is off the normal path)
        problems.append("")  # both refused: checked once

    run_probing(before=check_before)
    assert problems and not any(problems), "\n".join(problems)


def test_a_late_share_for_a_finished_set_is_refused() -> None:
    refused: list[str] = []

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if message.kind != "Fused" or refused:
            return
        # The fused result is out: the share that completed the set, once more, is refused.
        decryption = net.aggregator._decryption
        assert decryption is not None and decryption.complete
        last = [d for _, kind, d in net.history if kind == "DecryptionShare"][-1]
        refused.append(assert_rejected(net.aggregator, last, MessageRejected, net.now))

    run_probing(probe)
    assert refused and "no decryption set is waiting for shares" in refused[0]


def test_decryption_requests_the_client_must_refuse() -> None:
    """A member about to be asked for its share refuses a request signed by anyone but
    the aggregator, for a set it is not in, for fewer than t holders or a stranger, for
    an older step, or with frames that are not c1; after answering, it refuses a
    second request for the same attempt, whatever its set.  Nothing changes."""
    before: dict[str, str] = {}
    after: dict[str, str] = {}

    def check_before(net: Network, recipient: str, data: bytes) -> None:
        message = first_of_round_one(net, data, "DecryptRequest", before)
        if message is None:
            return
        body = message.body
        assert isinstance(body, DecryptRequest)
        client = net.clients[recipient]
        assert client.state is ClientState.UPDATE_UPLOADED and recipient in body.members
        others = tuple(sorted(n for n in net.clients if n != recipient))
        attempt = message.header.attempt
        cases = {
            "from-a-client": (resigned(net, message, others[0]), ForgedMessage),
            "not-my-set": (resigned(net, message, AGGREGATOR, body=DecryptRequest(
                others, body.c1)), MalformedMessage),
            "too-few": (resigned(net, message, AGGREGATOR, body=DecryptRequest(
                (recipient,), body.c1)), MalformedMessage),
            "stranger": (resigned(net, message, AGGREGATOR, body=DecryptRequest(
                tuple(sorted((recipient, AGGREGATOR))), body.c1)), MalformedMessage),
            "earlier-attempt": (resigned(net, message, AGGREGATOR, attempt=attempt - 1),
                                StaleMessage),
            "earlier-round": (resigned(net, message, AGGREGATOR, round=0), StaleMessage),
            "not-c1": (resigned(net, message, AGGREGATOR, body=DecryptRequest(
                body.members, (b"TFLF" + bytes(60),))), MalformedMessage),
        }
        for label, (forged, error) in cases.items():
            before[label] = assert_rejected(client, forged, error, net.now)

    def check_after(net: Network, recipient: str, data: bytes) -> None:
        message = first_of_round_one(net, data, "DecryptRequest", after)
        if message is None:
            return
        client = net.clients[recipient]
        assert client.state is ClientState.ROUND_DECRYPTING
        everyone = tuple(sorted(net.clients))
        other_set = resigned(net, message, AGGREGATOR, body=DecryptRequest(
            everyone, message.body.c1))  # type: ignore[union-attr]
        after["other-set"] = assert_rejected(client, other_set, DuplicateMessage, net.now)

    net = run_probing(check_after, before=check_before)
    assert len(before) == 7 and after
    assert "a set I am not in" in before["not-my-set"]
    assert "is not t holders of the key" in before["too-few"]
    assert "is not t holders of the key" in before["stranger"]
    assert "a second decryption request for this attempt" in after["other-set"]
    assert net.finished(AGGREGATOR) and not net.aggregator.dropped


def test_fused_results_the_client_must_refuse() -> None:
    """A fused result signed by anyone but the aggregator, for an older step or not for
    t holders is refused before it is decoded; nothing changes."""
    refused: dict[str, str] = {}

    def check_before(net: Network, recipient: str, data: bytes) -> None:
        message = first_of_round_one(net, data, "Fused", refused)
        if message is None:
            return
        body = message.body
        assert isinstance(body, Fused)
        client = net.clients[recipient]
        other = next(n for n in net.clients if n != recipient)
        cases = {
            "from-a-client": (resigned(net, message, other), ForgedMessage),
            "earlier-attempt": (resigned(net, message, AGGREGATOR,
                                         attempt=message.header.attempt - 1), StaleMessage),
            "earlier-round": (resigned(net, message, AGGREGATOR, round=0), StaleMessage),
            "too-few": (resigned(net, message, AGGREGATOR, body=Fused(
                body.members[:1], body.c1_digest, body.fused, body.plain)), MalformedMessage),
        }
        for label, (forged, error) in cases.items():
            refused[label] = assert_rejected(client, forged, error, net.now)

    net = run_probing(before=check_before)
    assert len(refused) == 4
    assert net.finished(AGGREGATOR) and not net.aggregator.dropped


@pytest.mark.parametrize(("nth", "stage"), [(1, "the sensitivity sum"),
                                           (2, "round 1's model")])
def test_a_fused_result_that_decodes_to_garbage_aborts_the_client(nth: int, stage: str) -> None:
    """A Fused whose polynomials are off by a uniform ring element (what a wrong share or
    pad gives), properly signed by the aggregator, decodes to values far outside the
    plausible range: the client aborts, naming the stage and the value, and tells the
    aggregator, instead of using it (for the mask, then for round 1)."""
    seen = itertools.count(1)

    def hold(sender: str, recipient: str, kind: str, now: float) -> list[float]:
        return [] if kind == "Fused" and recipient == "client1" and next(seen) == nth else [0.0]

    net = Network(build_manifest(3, rounds=1), faults=hold)
    client = net.clients["client1"]
    net.start()

    def fused_sent() -> list[bytes]:
        return [data for _, kind, data in net.history if kind == "Fused"]

    assert run_until(net, lambda: len(fused_sent()) == nth)
    message = kind_of(net, fused_sent()[-1])
    body = message.body
    assert isinstance(body, Fused) and client.state in (
        ClientState.MASK_UPLOADED, ClientState.MASK_DECRYPTING,
        ClientState.UPDATE_UPLOADED, ClientState.ROUND_DECRYPTING)
    context, rounding = client.context, ShareRounding.of(client.context)
    key_id, length = client._keys.key_id, client._protected_length()
    assert key_id is not None
    fused = decode_polynomials(context, body.fused, PolynomialRole.FUSED, key_id=key_id,
                               length=length)
    levels = np.array([rounding.levels(q) for q in rounding.moduli], dtype=np.uint64)
    noise = np.random.default_rng(nth).integers(0, levels[0], fused.shape, dtype=np.uint64)
    tampered = (fused + noise % levels[None, :, None]) % levels[None, :, None]
    frames = tuple(encode_polynomials(context, PolynomialRole.FUSED, key_id, length, tampered))
    forged = resigned(net, message, AGGREGATOR, body=dataclasses.replace(body, fused=frames))
    step = client.receive(forged, net.now)
    (event,) = step.events
    assert client.state is ClientState.ABORTED and isinstance(event, Aborted)
    reason = event.reason
    assert f"the fused result for {stage} is implausible: value" in reason
    assert "is outside [" in reason and "misbehaving aggregator or client" in reason
    assert [out.kind for out in step.sends] == ["Abort"] and client._keys.threshold_key is None


def test_plausible_sums_pass_and_each_kind_of_garbage_is_named() -> None:
    assert implausible(np.array([0.0, 0.5, 1.0 + 1e-9]), sensitivities=True,
                       value_bound=16.0, error=1e-6) is None
    assert implausible(np.array([-16.0, 16.0]), sensitivities=False, value_bound=16.0,
                       error=0.0) is None
    for bad, index in (([0.2, np.nan], 1), ([np.inf, 0.0], 0), ([0.0, -0.01], 1)):
        problem = implausible(np.array(bad), sensitivities=True, value_bound=16.0, error=1e-3)
        assert problem is not None and f"at index {index} (1 of 2 values)" in problem
    problem = implausible(np.array([16.5]), sensitivities=False, value_bound=16.0, error=0.25)
    assert problem == "value 16.5 at index 0 (1 of 1 values) is outside [-16.25, 16.25]"


def walk(value: Any, seen: set[int] | None = None, depth: int = 0) -> list[Any]:
    seen = set() if seen is None else seen
    if id(value) in seen or depth > 8:
        return []
    seen.add(id(value))
    found = [value]
    children: list[Any] = []
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        children = list(value)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        children = list(vars(value).values())
    for child in children:
        found.extend(walk(child, seen, depth + 1))
    return found


# 0.25: the mask stage (a full-length sensitivity sum decrypted); 1: none, all encrypted.
@pytest.mark.parametrize("fraction", [0.25, 1.0])
def test_aggregator_never_holds_secrets_or_anything_it_could_fuse(fraction: float) -> None:
    snapshots: list[list[Any]] = []
    group_keys: set[bytes] = set()

    def probe(net: Network, recipient: str, data: bytes) -> None:
        snapshots.append(walk(net.aggregator))
        for client in net.clients.values():
            if client._keys.group_key:
                group_keys.add(client._keys.group_key)

    net = run_probing(probe, fraction=fraction)
    forbidden = (SecretKey, ThresholdSecret, PartialDecryption, PartyKeys,
                 ThresholdKey, KeyLimbs)
    for objects in snapshots:
        assert not [o for o in objects if isinstance(o, forbidden)]
        assert not [o for o in objects if isinstance(o, bytes) and o in group_keys]
        assert not [o for o in objects
                    if isinstance(o, np.ndarray) and o.dtype.kind == "f" and o.size == 40]
    assert group_keys and net.aggregator.mask is not None


def test_key_deliveries_are_sealed_for_their_recipient_alone() -> None:
    opened: list[str] = []

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if message.kind != "KeyDelivery" or recipient == AGGREGATOR:
            return
        from protocols.session import seal_context

        sender = net.manifest.directory[message.header.sender]
        context = seal_context(message.header, "key-delivery")
        sealed = message.body.sealed  # type: ignore[union-attr]
        for outsider in (AGGREGATOR, *(n for n in net.clients if n != recipient)):
            if outsider == message.header.sender:
                continue
            with pytest.raises(AuthenticationError):
                open_from(identity(outsider), sender, sealed, context=context)
        assert open_from(identity(recipient), sender, sealed, context=context)
        opened.append(recipient)

    run_probing(probe)
    assert len(opened) == 6  # 3 dealers x 2 recipients


def test_the_aggregator_cannot_read_what_it_fuses() -> None:
    """Blind fusion: c0 plus the set's shares is still under the pad, so the fused
    result the aggregator broadcasts decodes to noise, and so does c0 plus any part of
    the set (the members' masks cancel only in the whole set's sum).  With the group key,
    which only clients hold, the pad comes off and the aggregate is there."""
    checked: list[int] = []
    sent_shares: dict[tuple[object, ...], list[tuple[bytes, ...]]] = {}  # by step

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if isinstance(message.body, DecryptionShare):  # the aggregator drops them once fused
            sent_shares.setdefault(message.header.step, []).append(message.body.shares)
        if recipient == AGGREGATOR or message.kind != "Fused" or recipient != "client1":
            return
        aggregator, client = net.aggregator, net.clients[recipient]
        decryption = aggregator._decryption
        assert decryption is not None and decryption.complete
        context, body = aggregator.context, message.body
        assert isinstance(body, Fused)
        rounding = ShareRounding.of(context)
        length = aggregator._protected_length()
        assert aggregator._key_id is not None
        shares = [decode_polynomials(context, frames, PolynomialRole.SHARE,
                                     key_id=aggregator._key_id, length=length)
                  for frames in sent_shares[message.header.step]]
        assert len(shares) == len(body.members)
        fused = blind_fusion(decryption.c0, shares, rounding)
        sent = decode_polynomials(context, body.fused, PolynomialRole.FUSED,
                                  key_id=aggregator._key_id, length=length)
        assert np.array_equal(sent, fused)  # what it broadcast: nothing more
        # Only the pad (and the noise) stands between the fused result and the values.
        assert client._keys.group_key is not None
        dset = decryption_set(net.manifest.session, client._keys.holders, body.members,
                              net.manifest.threshold, message.header.step)
        values = decode_sums(context, unpad(fused, client._keys.group_key, dset,
                                            message.header.attempt, rounding), length,
                             coefficients=True)
        assert np.abs(values).max() <= 2.0  # weighted averages of values within ±1
        for partial in (fused, *(blind_fusion(decryption.c0, [share], rounding)
                                 for share in shares)):
            blind = decode_sums(context, rounding.lifted(partial), length, coefficients=True)
            # Decoding a uniform ring element gives values in the thousands, not the sum.
            assert np.median(np.abs(blind - values)) > 50, "the aggregator could read it"
        checked.append(message.header.round)

    run_probing(probe)
    assert checked == [0, 1, 2]  # the sensitivity sum and each round's model


def test_a_member_gives_no_more_shares_than_its_key_epochs_budget() -> None:
    """An aggregator that keeps asking for retries (each attempt is a new share of the
    same c1) gets at most Q shares per key epoch, the number the noise flooding is
    sized for: then the member leaves the session instead of answering."""
    params = dataclasses.replace(build_manifest(3, length=12, rounds=1).params,
                                 decryption_queries=3)
    net = Network(build_manifest(3, length=12, rounds=1, params=params))
    client = net.clients["client2"]  # a member for the mask and in round 1: 2 shares
    net.start()
    assert run_until(net, lambda: client.state is ClientState.ROUND_DECRYPTING)
    assert client._budget.used == 2
    request = next(kind_of(net, d) for _, kind, d in reversed(net.history)
                   if kind == "DecryptRequest" and kind_of(net, d).header.recipient == "client2")
    answers = []
    for attempt in (2, 3):
        forged = resigned(net, request, AGGREGATOR, attempt=attempt)
        answers.append(client.receive(forged, net.now))
    assert [o.kind for o in answers[0].sends] == ["DecryptionShare"]  # the third share
    assert client.state is ClientState.ABORTED and client._budget.used == 3
    assert [o.kind for o in answers[1].sends] == ["Abort"]  # no fourth share
    assert "3 its noise flooding allows" in str(answers[1].events[0])
