"""The async driver over the in-memory transport: real OpenFHE, real asyncio tasks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from protocol_harness import identity, local_model, sensitivity_map

from protocols import MaskPolicy, Mode, PartyRefused, Timeouts, make_manifest
from protocols.manifest import Manifest
from threshold_fl.crypto import context_for
from threshold_fl.errors import ManifestMismatch, ParameterError, SessionAborted
from threshold_fl.node import Aggregator, FederatedClient, KeyAuthority, Node
from transports import FaultPlan, MemoryHub

LENGTH = 30
NAMES = ("client1", "client2", "client3")
FAST = Timeouts(join_s=5, keys_s=5, upload_s=5, decrypt_s=1.5)


def manifest_for(mode: Mode, rounds: int = 2, fraction: float = 0.3) -> Manifest:
    return make_manifest(
        session="node-test", aggregator=identity("aggregator").public,
        clients=[identity(name).public for name in NAMES],
        key_authority=identity("authority").public if mode is Mode.SINGLE_KEY else None,
        model_length=LENGTH, mode=mode, rounds=rounds, mask=MaskPolicy(fraction=fraction),
        always_encrypt=((0, 2),), timeouts=FAST,
    )


class DyingTransport:
    """A memory transport whose party vanishes right after one chosen send."""

    def __init__(self, hub: MemoryHub, party: str) -> None:
        self._hub, self._inner = hub, hub.connect(party)
        self.die_after_next_send = False

    @property
    def party_id(self) -> str:
        return self._inner.party_id

    async def send(self, recipients: Sequence[str], data: bytes) -> None:
        await self._inner.send(recipients, data)
        if self.die_after_next_send:
            self._hub.disconnect(self.party_id)

    async def receive(self) -> bytes:
        return await self._inner.receive()

    async def close(self) -> None:
        await self._inner.close()


class Federation:
    """Runs an aggregator and clients as tasks; records what each client uploaded."""

    def __init__(self, manifest: Manifest, hub: MemoryHub) -> None:
        self.manifest, self.hub = manifest, hub
        # The crypto layer's bound plus float32 rounding of the plain part.
        self.tolerance = context_for(manifest.params).error_bound(len(NAMES)) + 1e-7
        self.uploads: dict[int, dict[str, np.ndarray]] = {}
        self.results: dict[str, list[tuple[int, np.ndarray]]] = {name: [] for name in NAMES}
        self.failing: dict[str, int] = {}  # client -> round in which its training raises
        self.after_upload: dict[str, int] = {}  # client -> round after whose upload it dies
        self.out_of_bound: dict[str, int] = {}  # client -> round it returns huge values
        # client -> (round, what its training callback returns instead of the array)
        self.returns: dict[str, tuple[int, Callable[[np.ndarray], object]]] = {}
        self.plain_index = -1
        self.errors: dict[str, BaseException] = {}
        self.error_at: dict[str, float] = {}  # loop time of each error
        self.manifests: dict[str, Manifest] = {}  # client -> a manifest other than the organiser's

    async def client(self, name: str, index: int) -> None:
        transport = DyingTransport(self.hub, name)

        def train(round_: int, model: np.ndarray | None) -> np.ndarray:
            if self.failing.get(name) == round_:
                raise RuntimeError("out of GPU memory")
            if self.after_upload.get(name) == round_:
                transport.die_after_next_send = True  # the next send is this upload
            update = local_model(name, round_, LENGTH)
            if self.out_of_bound.get(name) == round_:
                # Beyond the manifest's value bound on a coordinate sent in the clear:
                # refused all the same, as an encrypted one would be.
                assert node.mask is not None
                index = int(node.mask.plain_indices()[0])
                update[index] = 1e6
                self.plain_index = index
                return update
            self.uploads.setdefault(round_, {})[name] = update
            if name in self.returns and self.returns[name][0] == round_:
                return self.returns[name][1](update)  # type: ignore[return-value]
            return update

        async def sensitivity() -> np.ndarray:
            return sensitivity_map(name, LENGTH)

        manifest = self.manifests.get(name, self.manifest)
        # At mask fraction 1 there is no mask agreement: the map is not asked for.
        node = FederatedClient(manifest, identity(name), transport, samples=10 + index,
                               train=train, sensitivity=None if manifest.mask.everything
                               else sensitivity)
        try:
            async with node:
                async for result in node.rounds():
                    self.results[name].append((result.round, result.model))
        except SessionAborted as exc:
            self.errors[name] = exc
            self.error_at[name] = asyncio.get_running_loop().time()

    async def run(self) -> Aggregator:
        aggregator = Aggregator(self.manifest, identity("aggregator"),
                                self.hub.connect("aggregator"))
        tasks = [self.client(name, index) for index, name in enumerate(NAMES)]
        if self.manifest.mode is Mode.SINGLE_KEY:
            authority = KeyAuthority(self.manifest, identity("authority"),
                                     self.hub.connect("authority"))
            tasks.append(authority.run())  # type: ignore[arg-type]
        await asyncio.wait_for(
            asyncio.gather(aggregator.run(), *tasks), timeout=60
        )
        return aggregator

    def expected(self, round_: int, contributors: tuple[str, ...]) -> np.ndarray:
        weights = np.array([10 + NAMES.index(name) for name in contributors], float)
        updates = [self.uploads[round_][name] for name in contributors]
        return sum(w * u for w, u in zip(weights / weights.sum(), updates, strict=True))  # type: ignore[return-value]

    def check(self, aggregator: Aggregator, survivors: tuple[str, ...]) -> None:
        rounds = [e for e in aggregator.summary.events if type(e).__name__ == "RoundCompleted"]
        assert [e.round for e in rounds] == list(range(1, self.manifest.rounds + 1))
        for event in rounds:
            expected = self.expected(event.round, event.contributors)
            for name in survivors:
                model = dict(self.results[name])[event.round]
                assert np.abs(model - expected).max() < self.tolerance


@pytest.mark.parametrize("mode", list(Mode))
async def test_sessions_over_the_memory_transport(mode: Mode) -> None:
    federation = Federation(manifest_for(mode), MemoryHub())
    aggregator = await federation.run()
    assert aggregator.summary.finished and not aggregator.summary.dropped
    federation.check(aggregator, NAMES)
    assert federation.errors == {}


async def test_full_encryption_needs_no_sensitivity_callback() -> None:
    federation = Federation(manifest_for(Mode.THRESHOLD, fraction=1.0), MemoryHub())
    aggregator = await federation.run()
    assert aggregator.summary.finished and not aggregator.summary.dropped
    federation.check(aggregator, NAMES)


def test_a_selective_mask_without_a_sensitivity_callback_is_refused_at_creation() -> None:
    with pytest.raises(ParameterError, match="pass sensitivity="):
        FederatedClient(manifest_for(Mode.THRESHOLD), identity("client1"),
                        MemoryHub().connect("client1"), samples=1,
                        train=lambda round_, model: np.zeros(LENGTH))


async def test_duplicated_delayed_and_reordered_messages_change_nothing() -> None:
    plan = FaultPlan.random(7, duplicate=0.2, delay=0.2, reorder=0.2, max_delay_s=0.02)
    federation = Federation(manifest_for(Mode.THRESHOLD), MemoryHub(faults=plan))
    aggregator = await federation.run()
    assert aggregator.summary.finished
    federation.check(aggregator, NAMES)
    assert aggregator.summary.rejected > 0  # the duplicates were seen and discarded


async def test_a_client_that_vanishes_after_uploading_still_counts_in_that_round() -> None:
    federation = Federation(manifest_for(Mode.THRESHOLD), MemoryHub())
    federation.after_upload["client2"] = 1
    aggregator = await federation.run()
    assert set(aggregator.summary.dropped) == {"client2"}
    federation.check(aggregator, ("client1", "client3"))
    contributors = [e.contributors for e in aggregator.summary.events
                    if type(e).__name__ == "RoundCompleted"]
    assert contributors == [NAMES, ("client1", "client3")]


async def test_a_failing_training_callback_leaves_the_session_cleanly() -> None:
    federation = Federation(manifest_for(Mode.PLAINTEXT), MemoryHub())
    federation.failing["client3"] = 2
    aggregator = await federation.run()
    assert "out of GPU memory" in aggregator.summary.dropped["client3"]
    assert "out of GPU memory" in str(federation.errors["client3"])
    federation.check(aggregator, ("client1", "client2"))


async def test_a_client_with_another_manifest_is_refused_at_once() -> None:
    organisers = manifest_for(Mode.PLAINTEXT)
    stale = dataclasses.replace(organisers, rounds=organisers.rounds + 1)  # same session
    federation = Federation(organisers, MemoryHub())
    federation.manifests["client3"] = stale
    started = asyncio.get_running_loop().time()
    aggregator = await federation.run()

    error = federation.errors["client3"]
    assert isinstance(error, ManifestMismatch)
    for fingerprint in (organisers.fingerprint(), stale.fingerprint()):
        assert fingerprint[:16] in str(error)
    assert "every party must run the same manifest file" in str(error)
    assert federation.error_at["client3"] - started < 1.0  # not at the 5 s join deadline
    refused = [e for e in aggregator.summary.events if isinstance(e, PartyRefused)]
    assert [e.party for e in refused] == ["client3"]
    # The others go on without it once the join deadline passes.
    assert aggregator.summary.finished and set(aggregator.summary.dropped) == {"client3"}
    federation.check(aggregator, ("client1", "client2"))


async def test_a_node_refuses_a_transport_of_another_party() -> None:
    hub = MemoryHub()
    manifest = manifest_for(Mode.PLAINTEXT)
    with pytest.raises(ValueError, match="connected as 'client1'"):
        Node(Aggregator(manifest, identity("aggregator"), hub.connect("aggregator")).machine,
             hub.connect("client1"))


@pytest.mark.parametrize("mode", ["threshold", "single-key", "plaintext"])
def test_the_embedding_example_runs(mode: str) -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "embed_async.py"
    done = subprocess.run([sys.executable, str(script), "--mode", mode, "--rounds", "2"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for name in ("alice", "bob", "carol"):
        assert f"{name}: round 2 global accuracy" in done.stdout
    assert "aggregator: 2 rounds" in done.stdout
