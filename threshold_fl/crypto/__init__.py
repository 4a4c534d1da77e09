"""Crypto foundation: CKKS on OpenFHE, single-key and threshold, with wire frames.

Importing this package imports OpenFHE (Python 3.10 only; see the README).
"""

from threshold_fl.crypto.context import (
    CkksContext,
    context_for,
    estimate_noise_bits,
    threshold_params,
    with_noise_flooding,
)
from threshold_fl.crypto.keys import (
    JointPublicKey,
    KeyPair,
    PartyKeys,
    PublicKey,
    SecretKey,
    ThresholdSecret,
    combine_public_shares,
    generate_keypair,
    lead_keygen,
    member_keygen,
)
from threshold_fl.crypto.params import (
    MAX_VECTOR_LENGTH,
    CkksParams,
    DecryptionNoise,
    ScalingTechnique,
    SecurityLevel,
)
from threshold_fl.crypto.vectors import (
    EncryptedSum,
    EncryptedVector,
    PartialDecryption,
    ciphertext_count,
    decrypt_vector,
    encrypt_chunks,
    encrypt_vector,
    fuse_partial_decryptions,
    partial_decrypt,
)

__all__ = [
    "MAX_VECTOR_LENGTH",
    "CkksContext",
    "CkksParams",
    "DecryptionNoise",
    "EncryptedVector",
    "JointPublicKey",
    "KeyPair",
    "PartialDecryption",
    "PartyKeys",
    "PublicKey",
    "ScalingTechnique",
    "SecretKey",
    "SecurityLevel",
    "ThresholdSecret",
    "EncryptedSum",
    "ciphertext_count",
    "combine_public_shares",
    "context_for",
    "decrypt_vector",
    "encrypt_chunks",
    "encrypt_vector",
    "estimate_noise_bits",
    "fuse_partial_decryptions",
    "generate_keypair",
    "lead_keygen",
    "member_keygen",
    "partial_decrypt",
    "threshold_params",
    "with_noise_flooding",
]
