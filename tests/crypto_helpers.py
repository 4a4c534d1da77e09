"""Helpers shared by the crypto tests: build a threshold federation in memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threshold_fl.crypto import (
    CkksContext,
    EncryptedVector,
    JointPublicKey,
    PartyKeys,
    ThresholdSecret,
    WeightedSum,
    combine_public_shares,
    encrypt_vector,
    lead_keygen,
    member_keygen,
)


@dataclass
class Federation:
    context: CkksContext
    parties: list[PartyKeys]
    joint: JointPublicKey
    secrets: dict[int, ThresholdSecret]


def make_federation(context: CkksContext, size: int) -> Federation:
    lead = lead_keygen(context, 1)
    parties = [lead] + [member_keygen(context, i, lead.public_share) for i in range(2, size + 1)]
    joint = combine_public_shares(context, {p.index: p.public_share for p in parties}, 1)
    return Federation(context, parties, joint, {p.index: joint.bind(p) for p in parties})


def aggregate(
    context: CkksContext, key_id: str, vectors: list[EncryptedVector], weights: np.ndarray
) -> EncryptedVector:
    total = WeightedSum(context, key_id, vectors[0].length)
    for weight, vector in zip(weights, vectors, strict=True):
        total.add(float(weight), vector)
    return total.result()


def encrypted_inputs(federation: Federation, inputs: list[np.ndarray]) -> list[EncryptedVector]:
    return [encrypt_vector(federation.context, federation.joint.key, x) for x in inputs]
