"""Helpers shared by the crypto tests: build a threshold federation in memory."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

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
    wire,
)
from threshold_fl.crypto.context import sha256_hex
from threshold_fl.crypto.frames import FrameKind, encode_frame
from threshold_fl.crypto.ring import BlobKind


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
    federation: Federation,
    inputs: Sequence[npt.NDArray[Any]],
    weights: npt.NDArray[Any] | None = None,
) -> list[EncryptedVector]:
    """Each input encrypted under the joint key, pre-weighted as clients do (weight 1 if
    no weights are given)."""
    weights = np.ones(len(inputs)) if weights is None else weights
    return [encrypt_vector(federation.context, federation.joint.key, x, weight=float(w))
            for x, w in zip(inputs, weights, strict=True)]


# -- real OpenFHE blobs of every kind that crosses the wire (for the ring tests) ----------
# KEY_SHARE and POLYNOMIALS frames carry raw limbs, no OpenFHE blob: their decoders
# check each value below its modulus, and test_frames.py fuzzes them.
@dataclass(frozen=True)
class RingSample:
    """One real blob: its ring kind, the frame kind that carries it, and its bytes."""

    kind: BlobKind
    frame_kind: FrameKind
    blob: bytes
    metadata: dict[str, Any]  # a valid frame's metadata for this blob


def ring_samples(context: CkksContext) -> dict[str, RingSample]:
    """Every blob kind, fresh and as OpenFHE re-serialises deserialised objects.

    Deserialised objects carry their own copies of the ring parameters, which OpenFHE
    then writes in full instead of as references: both layouts travel.
    """
    federation = make_federation(context, 3)
    lead, member = federation.parties[0], federation.parties[1]
    cc, save = context.native, context.serialize
    values = np.linspace(-0.5, 0.5, context.values_per_ciphertext, dtype=np.float64)
    uploads = [context.encrypt_upload(federation.joint.key.native, values) for _ in range(2)]
    received = [context.deserialize_ciphertext(save(c)) for c in uploads]
    total = cc.EvalAdd(*received)
    joint_id = federation.joint.key_id
    vector_meta = {"key_id": joint_id, "length": context.values_per_ciphertext,
                   "aggregated": False, "first": 0, "count": 1}
    share_meta = {"key_id": joint_id, "length": context.values_per_ciphertext,
                  "vector_digest": "0" * 64, "party_index": 2, "lead": False,
                  "first": 0, "count": 1}
    pk_loaded = context.deserialize_public_key(save(member.public_share.native))
    blobs: dict[str, tuple[BlobKind, FrameKind, bytes, dict[str, Any]]] = {
        "ciphertext upload": (BlobKind.CIPHERTEXT, FrameKind.CIPHERTEXTS, save(uploads[0]),
                              vector_meta),
        "ciphertext resaved": (BlobKind.CIPHERTEXT, FrameKind.CIPHERTEXTS, save(received[0]),
                               vector_meta),
        "ciphertext aggregate": (BlobKind.CIPHERTEXT, FrameKind.CIPHERTEXTS, save(total),
                                 dict(vector_meta, aggregated=True)),
        "share lead": (BlobKind.DECRYPTION_SHARE, FrameKind.PARTIAL_DECRYPTION,
                       save(cc.MultipartyDecryptLead([total], lead.secret.native)[0]),
                       dict(share_meta, party_index=1, lead=True)),
        "share member": (BlobKind.DECRYPTION_SHARE, FrameKind.PARTIAL_DECRYPTION,
                         save(cc.MultipartyDecryptMain([total], member.secret.native)[0]),
                         share_meta),
        "public key lead": (BlobKind.PUBLIC_KEY, FrameKind.PUBLIC_KEY,
                            save(lead.public_share.native), {"party_index": 1}),
        "public key resaved": (BlobKind.PUBLIC_KEY, FrameKind.PUBLIC_KEY, save(pk_loaded),
                               {"party_index": 2}),
        "joint key": (BlobKind.PUBLIC_KEY, FrameKind.PUBLIC_KEY,
                      save(cc.MultiAddPubKeys(context.deserialize_public_key(
                          save(lead.public_share.native)), pk_loaded, "")),
                      {"party_index": 0}),
        "secret key": (BlobKind.SECRET_KEY, FrameKind.SECRET_KEY, save(member.secret.native),
                       {"public_key_id": member.public_share.key_id}),
        "secret key resaved": (BlobKind.SECRET_KEY, FrameKind.SECRET_KEY,
                               save(context.deserialize_private_key(
                                   save(member.secret.native))),
                               {"public_key_id": member.public_share.key_id}),
    }
    return {name: RingSample(*entry) for name, entry in blobs.items()}


def ring_frame(context: CkksContext, sample: RingSample, blob: bytes) -> bytes:
    """A valid frame (digest and, for public keys, key id recomputed) carrying ``blob``."""
    metadata = dict(sample.metadata)
    if sample.frame_kind is FrameKind.PUBLIC_KEY:
        metadata["key_id"] = sha256_hex(blob)
    return encode_frame(sample.frame_kind, context.fingerprint, metadata, [blob])


def ring_receivers(context: CkksContext) -> dict[FrameKind, Callable[[bytes], object]]:
    """The project's receiving function for each frame kind (checks, then OpenFHE)."""
    return {
        FrameKind.CIPHERTEXTS: lambda frame: wire.decode_vector(context, [frame]),
        FrameKind.PARTIAL_DECRYPTION: lambda frame: wire.decode_partial_decryption(
            context, [frame]),
        FrameKind.PUBLIC_KEY: lambda frame: wire.decode_public_key(context, frame),
        FrameKind.SECRET_KEY: lambda frame: wire.decode_secret_key(context, frame),
    }
