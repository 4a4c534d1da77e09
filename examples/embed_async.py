"""Embed threshold-fl in an asyncio app: one aggregator and three clients in one process.

Each client trains a small softmax-regression model on its own synthetic data; the
aggregator averages the encrypted updates without ever seeing a model, and the
clients decrypt each round's global model together (threshold mode).  The parties
talk over the in-memory transport; swap in the MQTT transport to run them apart.

The README's embedding example ("Embedding the protocol in an async app") is the minimal
version of this one: it checks each global model against plain FedAvg and lists what the
callbacks must return (tests/test_readme_example.py runs it).

    python examples/embed_async.py [--mode threshold|single-key|plaintext] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import numpy as np
import numpy.typing as npt

from protocols import Manifest, MaskPolicy, Mode, make_manifest
from threshold_fl.identity import Identity
from threshold_fl.node import Aggregator, FederatedClient, KeyAuthority
from transports import MemoryHub

Array = npt.NDArray[Any]
FEATURES, CLASSES = 8, 3
LENGTH = FEATURES * CLASSES + CLASSES


def make_data(seed: int, count: int) -> tuple[Array, Array]:
    """Three Gaussian blobs; every client draws its own samples."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 2, (CLASSES, FEATURES))
    labels = rng.integers(0, CLASSES, count)
    return centres[labels] + rng.normal(0, 3.0, (count, FEATURES)), labels


def accuracy(model: Array, data: tuple[Array, Array]) -> float:
    weights, bias = model[: FEATURES * CLASSES].reshape(FEATURES, CLASSES), model[-CLASSES:]
    features, labels = data
    return float(np.mean(np.argmax(features @ weights + bias, axis=1) == labels))


def train(model: Array, data: tuple[Array, Array], steps: int = 3) -> Array:
    """A few steps of gradient descent on the softmax cross-entropy."""
    features, labels = data
    weights = model[: FEATURES * CLASSES].reshape(FEATURES, CLASSES).copy()
    bias = model[-CLASSES:].copy()
    onehot = np.eye(CLASSES)[labels]
    for _ in range(steps):
        logits = features @ weights + bias
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        error = (probabilities - onehot) / len(labels)
        weights -= 0.1 * features.T @ error
        bias -= 0.1 * error.sum(axis=0)
    model_out: Array = np.clip(np.concatenate([weights.ravel(), bias]), -8, 8)
    return model_out  # clipped to stay within the CKKS value bound


async def run_client(
    manifest: Manifest,
    identity: Identity,
    hub: MemoryHub,
    data: tuple[Array, Array],
    test: tuple[Array, Array],
) -> None:
    initial = np.zeros(LENGTH)

    def local_training(round_: int, model: Array | None) -> Array:
        return train(initial if model is None else model, data)

    def sensitivity() -> Array:
        gradient_step: Array = np.abs(train(initial, data, steps=1))
        return gradient_step  # a cheap stand-in for the real sensitivity map

    async with hub.connect(identity.party_id) as transport, FederatedClient(
        manifest, identity, transport, samples=len(data[1]),
        train=local_training, sensitivity=sensitivity,
    ) as client:
        async for result in client.rounds():
            print(f"{identity.party_id}: round {result.round} global accuracy "
                  f"{accuracy(result.model, test):.3f}")


async def main(mode: str, rounds: int) -> None:
    names = ["alice", "bob", "carol"]
    identities = {name: Identity.generate(name) for name in [*names, "server", "authority"]}
    manifest = make_manifest(
        session="embed-demo",
        aggregator=identities["server"].public,
        clients=[identities[name].public for name in names],
        key_authority=identities["authority"].public if mode == "single-key" else None,
        model_length=LENGTH,
        mode=mode,
        rounds=rounds,
        mask=MaskPolicy(fraction=0.3),
    )
    hub = MemoryHub()
    test = make_data(99, 500)
    async with hub.connect("server") as server_transport:
        aggregator = Aggregator(manifest, identities["server"], server_transport)
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(aggregator.run())]
        if mode == "single-key":
            authority = KeyAuthority(manifest, identities["authority"],
                                     hub.connect("authority"))
            tasks.append(asyncio.create_task(authority.run()))
        tasks += [
            asyncio.create_task(run_client(manifest, identities[name], hub,
                                           make_data(index, 200), test))
            for index, name in enumerate(names)
        ]
        await asyncio.gather(*tasks)
        print(f"aggregator: {aggregator.summary.rounds} rounds, "
              f"{aggregator.summary.bytes_sent / 1e6:.2f} MB sent, "
              f"dropped: {aggregator.summary.dropped or 'none'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=[m.value for m in Mode], default="threshold")
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    asyncio.run(main(arguments.mode, arguments.rounds))
