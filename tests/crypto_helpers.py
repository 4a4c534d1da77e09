"""Helpers shared by the crypto tests: build a threshold federation in memory."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from threshold_fl.crypto import (
    CkksContext,
    EncryptedSum,
    EncryptedVector,
    JointPublicKey,
    PartyKeys,
    ThresholdSecret,
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


def aggregate(context: CkksContext, key_id: str, vectors: list[EncryptedVector]) -> EncryptedVector:
    total = EncryptedSum(context, key_id, vectors[0].length)
    for vector in vectors:
        total.add(vector)
    return total.result()


def encrypted_inputs(
    federation: Federation, inputs: list[np.ndarray], weights: np.ndarray | None = None
) -> list[EncryptedVector]:
    """Each input encrypted under the joint key, pre-weighted as clients do (weight 1 if
    no weights are given)."""
    weights = np.ones(len(inputs)) if weights is None else weights
    return [encrypt_vector(federation.context, federation.joint.key, x, weight=float(w))
            for x, w in zip(inputs, weights, strict=True)]
