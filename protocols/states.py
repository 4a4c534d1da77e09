"""Each role's states, and where each transition may lead: the targets tables.

``TARGETS[state][body type]`` names the states the handler that ``TRANSITIONS`` lists
for that pair may leave the machine in; ``OTHER_TARGETS[method]`` does the same for
the state changes outside the table (``start``, ``submit_*``, deadlines, ``Abort``,
local aborts).  Staying in the state needs no entry.  ``Machine.handle`` and
``Machine.on_deadline`` raise on an undeclared change, tests/test_protocol_targets.py
checks every ``self.state = ...`` against these tables, and docs/protocol.md section 8
is rendered from them (:func:`protocols.tables.state_table`).  They live apart from
the machines so that one page shows every role's graph (and aggregator.py stays short).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from protocols.messages import (
    Aggregate,
    DecryptionShare,
    DecryptRequest,
    Finished,
    Fused,
    Hello,
    KeyConfirm,
    KeyDelivery,
    KeygenStart,
    MaskConfirm,
    MaskStart,
    PublicShare,
    RoundDone,
    RoundStart,
    SensitivityUpload,
    Stage,
    UpdateUpload,
)

__all__ = [
    "AGGREGATOR_OTHER_TARGETS", "AGGREGATOR_STAGES", "AGGREGATOR_TARGETS",
    "AUTHORITY_OTHER_TARGETS", "AUTHORITY_TARGETS", "AggregatorState", "CLIENT_OTHER_TARGETS",
    "CLIENT_TARGETS",
    "CLIENT_WAITING", "ClientState", "KeyAuthorityState", "OtherTargets", "Targets",
]

#: state -> body type -> the states its handler may move to.
Targets = Mapping[enum.Enum, Mapping[type, frozenset[enum.Enum]]]
#: method name (outside the table) -> the states it may move to.
OtherTargets = Mapping[str, frozenset[enum.Enum]]


class ClientState(enum.Enum):
    IDLE = "idle"
    JOINING = "joining"
    KEY_AGREEMENT = "key agreement"
    KEYS_CONFIRMED = "keys confirmed"
    MASK_COMPUTING = "computing sensitivity"
    MASK_UPLOADED = "sensitivity uploaded"
    MASK_DECRYPTING = "decrypting sensitivity"
    MASK_CONFIRMED = "mask confirmed"
    TRAINING = "training"
    UPDATE_UPLOADED = "update uploaded"
    ROUND_DECRYPTING = "decrypting round"
    ROUND_DONE = "round done"
    FINISHED = "finished"
    ABORTED = "aborted"


class AggregatorState(enum.Enum):
    IDLE = "idle"
    JOINING = "joining"
    KEY_AGREEMENT = "key agreement"
    MASK_UPLOAD = "mask upload"
    MASK_DECRYPTION = "mask decryption"
    ROUND_UPLOAD = "round upload"
    ROUND_DECRYPTION = "round decryption"
    FINISHED = "finished"
    ABORTED = "aborted"


class KeyAuthorityState(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"
    DONE = "keys delivered"
    ABORTED = "aborted"


C, A, K = ClientState, AggregatorState, KeyAuthorityState
_NONE: frozenset[enum.Enum] = frozenset()


def _to(*states: enum.Enum) -> frozenset[enum.Enum]:
    return frozenset(states)


# A newer KeygenStart restarts key agreement; plaintext mode confirms at once; a client
# left out of the new epoch (or holding a bad share) aborts.
_NEW_EPOCH = _to(C.KEY_AGREEMENT, C.KEYS_CONFIRMED, C.ABORTED)
_KEY_PART = _to(C.KEYS_CONFIRMED, C.ABORTED)
_Row = dict[type, frozenset[enum.Enum]]
_EARLY_KEYS: _Row = {PublicShare: _NONE, KeyDelivery: _NONE}  # kept until their KeygenStart
_TRAIN = _to(C.TRAINING, C.ABORTED)  # a foreign key or mask in the announcement aborts

CLIENT_TARGETS: Targets = {
    C.JOINING: {KeygenStart: _NEW_EPOCH, **_EARLY_KEYS},
    C.KEY_AGREEMENT: {KeygenStart: _NEW_EPOCH, PublicShare: _KEY_PART, KeyDelivery: _KEY_PART},
    C.KEYS_CONFIRMED: {
        **_EARLY_KEYS,
        KeygenStart: _NEW_EPOCH,
        MaskStart: _to(C.MASK_COMPUTING, C.ABORTED),
        RoundStart: _TRAIN,
    },
    C.MASK_COMPUTING: {MaskStart: _to(C.ABORTED)},  # a retry: still computing
    C.MASK_UPLOADED: {
        MaskStart: _to(C.ABORTED),  # a retry: uploads again
        Aggregate: _to(C.MASK_CONFIRMED),  # decrypted locally (not threshold mode)
        DecryptRequest: _to(C.MASK_DECRYPTING, C.ABORTED),  # a member; budget spent: aborts
        Fused: _to(C.MASK_CONFIRMED, C.ABORTED),  # not a member; implausible: aborts
    },
    # a further part of a streamed decryption stays (a request, or a fused part not the
    # last); so do MASK_UPLOADED and UPDATE_UPLOADED on a Fused part that is not the last
    C.MASK_DECRYPTING: {DecryptRequest: _to(C.ABORTED),
                        Fused: _to(C.MASK_CONFIRMED, C.ABORTED)},
    C.MASK_CONFIRMED: {**_EARLY_KEYS, KeygenStart: _NEW_EPOCH, RoundStart: _TRAIN},
    C.TRAINING: {RoundStart: _to(C.ABORTED)},
    C.UPDATE_UPLOADED: {
        RoundStart: _to(C.ABORTED),
        Aggregate: _to(C.ROUND_DONE),
        DecryptRequest: _to(C.ROUND_DECRYPTING, C.ABORTED),
        Fused: _to(C.ROUND_DONE, C.ABORTED),
    },
    C.ROUND_DECRYPTING: {DecryptRequest: _to(C.ABORTED), Fused: _to(C.ROUND_DONE, C.ABORTED)},
    C.ROUND_DONE: {
        **_EARLY_KEYS,
        KeygenStart: _NEW_EPOCH,
        RoundStart: _TRAIN,
        Finished: _to(C.FINISHED),
    },
}
CLIENT_OTHER_TARGETS: OtherTargets = {
    "start": _to(C.JOINING),
    "submit_sensitivity": _to(C.MASK_UPLOADED),
    "submit_update": _to(C.UPDATE_UPLOADED),
    "_on_abort": _to(C.ABORTED),
    "_deadline_passed": _to(C.ABORTED),
    "abort": _to(C.ABORTED),
}

#: What a client waits for in each state, in words (``ClientMachine.waiting_for``).
CLIENT_WAITING = {
    C.JOINING: "joined; waiting for the aggregator {aggregator!r} to start key agreement "
               "(it starts once every client has joined, or at its join deadline)",
    C.KEY_AGREEMENT: "key agreement: waiting for the other clients' key shares",
    C.KEYS_CONFIRMED: "keys agreed; waiting for the aggregator to start the next stage",
    C.MASK_COMPUTING: "computing the sensitivity map",
    C.MASK_UPLOADED: "sensitivity map uploaded; waiting for the other clients' maps and "
                     "the joint decryption",
    C.MASK_DECRYPTING: "decryption share sent; waiting for the aggregator's fused "
                       "sensitivity sum",
    C.MASK_CONFIRMED: "mask agreed; waiting for round 1 to start",
    C.TRAINING: "round {round}: training",
    C.UPDATE_UPLOADED: "round {round}: update uploaded; waiting for the other clients' updates",
    C.ROUND_DECRYPTING: "round {round}: decryption share sent; waiting for the aggregator's "
                        "fused global model",
    C.ROUND_DONE: "round {round} done; waiting for round {next} to start",
}

# Anything that ends a step may, through _progress, start the next one, or abort when
# fewer than t clients are left.
_KEYS_AGREED = _to(A.MASK_UPLOAD, A.ROUND_UPLOAD, A.ABORTED)
_DECRYPTED = _to(A.ROUND_UPLOAD, A.KEY_AGREEMENT, A.ABORTED)
# A share completes the set (the fused result goes out) or not; the step stays.
_SHARE: _Row = {DecryptionShare: _NONE}
# A dropout (deadline, Abort, offline) can finish the step the others already finished,
# restart key agreement, retry an upload (same state) or abort.
_AFTER_DROP = _to(A.KEY_AGREEMENT, A.MASK_UPLOAD, A.MASK_DECRYPTION, A.ROUND_UPLOAD,
                  A.ROUND_DECRYPTION, A.FINISHED, A.ABORTED)

AGGREGATOR_TARGETS: Targets = {
    # the last hello starts key agreement; one from another manifest is refused (stays)
    A.JOINING: {Hello: _to(A.KEY_AGREEMENT)},
    A.KEY_AGREEMENT: {
        PublicShare: _KEYS_AGREED,  # may settle confirmations that overtook it
        KeyDelivery: _NONE,
        KeyConfirm: _KEYS_AGREED,
    },
    # the last upload starts the decryption; no decryption budget left aborts
    A.MASK_UPLOAD: {SensitivityUpload: _to(A.MASK_DECRYPTION, A.ABORTED)},
    A.MASK_DECRYPTION: {**_SHARE, MaskConfirm: _DECRYPTED},
    A.ROUND_UPLOAD: {UpdateUpload: _to(A.ROUND_DECRYPTION, A.ABORTED)},
    A.ROUND_DECRYPTION: {**_SHARE, RoundDone: _DECRYPTED | {A.FINISHED}},
}
AGGREGATOR_OTHER_TARGETS: OtherTargets = {
    "start": _to(A.JOINING),
    "_deadline_passed": _AFTER_DROP,
    "_on_abort": _AFTER_DROP,
    "party_offline": _AFTER_DROP,
    # a member owing its share lost its connection: another set (no decryption budget
    # left aborts)
    "party_unreachable": _to(A.ABORTED),
    # back during a key agreement that left it out: it restarts with it
    "party_reachable": _to(A.KEY_AGREEMENT, A.ABORTED),
}

#: The protocol stage of the messages the aggregator sends and expects in each state.
AGGREGATOR_STAGES: Mapping[enum.Enum, Stage] = {
    A.IDLE: Stage.SETUP,
    A.JOINING: Stage.SETUP,
    A.KEY_AGREEMENT: Stage.KEYS,
    A.MASK_UPLOAD: Stage.MASK,
    A.MASK_DECRYPTION: Stage.MASK,
    A.ROUND_UPLOAD: Stage.ROUND,
    A.ROUND_DECRYPTION: Stage.ROUND,
    A.FINISHED: Stage.END,
    A.ABORTED: Stage.END,
}

# another manifest's KeygenStart aborts
AUTHORITY_TARGETS: Targets = {K.WAITING: {KeygenStart: _to(K.DONE, K.ABORTED)}}
AUTHORITY_OTHER_TARGETS: OtherTargets = {
    "start": _to(K.WAITING),
    "_on_abort": _to(K.ABORTED),
    "_deadline_passed": _to(K.ABORTED),
}
