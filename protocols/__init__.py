"""FL orchestration layer of threshold-fl (the paper's "FL Orchestration").

Sans-I/O state machines, one per role, for the three protocol stages: threshold key
agreement, encryption-mask agreement and masked FedAvg rounds with joint
decryption.  Feed a machine the bytes it received and the current time; it returns
the signed bytes to send and events for the application.  Ask it for its next
deadline and call ``on_deadline`` when that passes.  See docs/protocol.md.

Layering (checked by ``tests/test_layering.py``): code here may use
``threshold_fl.crypto`` and ``threshold_fl.ml``, but never ``transports``, never
asyncio or sockets, and never a clock or a randomness source of its own (no
``time``, ``random``, ``secrets``, ``os.urandom``): time and randomness are passed
in by the caller, so every state machine is deterministic and testable.
"""

from protocols.aggregator import AggregatorMachine, AggregatorState
from protocols.authority import KeyAuthorityMachine, KeyAuthorityState
from protocols.client import ClientMachine, ClientState
from protocols.events import (
    Aborted,
    Event,
    Finished,
    KeyAgreed,
    MaskAgreed,
    Outgoing,
    PartyDropped,
    PartyRefused,
    RoundCompleted,
    SensitivityNeeded,
    Step,
    UpdateNeeded,
)
from protocols.manifest import (
    LocalPrivacy,
    Manifest,
    MaskPolicy,
    Mode,
    ModelSpec,
    Role,
    Timeouts,
    make_manifest,
)

__all__ = [
    "Aborted",
    "AggregatorMachine",
    "AggregatorState",
    "ClientMachine",
    "ClientState",
    "Event",
    "Finished",
    "KeyAgreed",
    "KeyAuthorityMachine",
    "KeyAuthorityState",
    "Manifest",
    "MaskAgreed",
    "LocalPrivacy",
    "MaskPolicy",
    "ModelSpec",
    "Mode",
    "Outgoing",
    "PartyDropped",
    "PartyRefused",
    "Role",
    "RoundCompleted",
    "SensitivityNeeded",
    "Step",
    "Timeouts",
    "UpdateNeeded",
    "make_manifest",
]
