"""What a client process trains and how (:class:`ClientPlan`), and its learner.

Kept apart from :mod:`threshold_fl.app.party` (the processes' asyncio glue): the plan is
plain data that the CLI, the benches and the tests build, and the learner is derived
from the manifest alone, so every process gets the same split and initial model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocols.manifest import Manifest, MaskPolicy
from threshold_fl.errors import ParameterError
from threshold_fl.identity import PartyId

__all__ = ["CLIENT_FAULTS", "DROP_STAGES", "ClientPlan", "check_drop_stage", "client_learner",
           "local_dp"]

#: When ``--drop-at`` kills a client: during key agreement, before its sensitivity map
#: (only below mask fraction 1: at 1 there is no mask agreement, see check_drop_stage),
#: before or after its upload of round ``--drop-round``, or on receiving that round's
#: DecryptRequest (a member of the decryption set, before its share is made).
DROP_STAGES = ("keys", "mask", "before-upload", "after-upload", "decrypt")
#: Client faults for tests: the drop stages, and "decrypt-frozen", which stops the process
#: (SIGSTOP) on that DecryptRequest: its connection stays open, so the broker publishes
#: its Last Will only after 1.5 keepalives.
CLIENT_FAULTS = (*DROP_STAGES, "decrypt-frozen")

@dataclass(frozen=True)
class ClientPlan:
    """What a client process trains and how; *drop_at* makes it kill itself (tests)."""

    epochs: int = 2
    learning_rate: float = 0.05
    batch_size: int = 32
    split: str = "iid"
    alpha: float = 0.5
    sensitivity_samples: int = 32
    dp_scale: float | None = None
    dp_clip: float = 1.0
    drop_at: str | None = None
    drop_round: int = 1
    #: How *drop_at* vanishes: "process" kills the process (SIGKILL); "connection" only
    #: shuts this client's MQTT connection (:meth:`MqttTransport.sever`), for several
    #: clients in one process.  Either way the broker publishes the Last Will.
    vanish: str = "process"

    def __post_init__(self) -> None:
        if self.drop_at is not None and self.drop_at not in CLIENT_FAULTS:
            raise ParameterError(f"drop stage must be one of {CLIENT_FAULTS}, got "
                                 f"{self.drop_at!r}")
        if self.vanish not in ("process", "connection"):
            raise ParameterError(f"vanish must be 'process' or 'connection', got "
                                 f"{self.vanish!r}")
        if self.vanish == "connection" and self.drop_at == "decrypt-frozen":
            raise ParameterError("decrypt-frozen stops the whole process: use "
                                 "vanish='process'")


def check_drop_stage(stage: str | None, fraction: float, option: str = "--drop-at") -> None:
    """Refuse a drop at the mask stage of a session that has none (mask fraction 1)."""
    if stage == "mask" and MaskPolicy(fraction).everything:
        raise ParameterError(
            f"{option} mask: at mask fraction 1 (everything encrypted, the default) there "
            "is no mask agreement to drop out of; set a fraction below 1 (--fraction) or "
            "pick another stage")


def local_dp(manifest: Manifest, plan: ClientPlan, kind: Any) -> Any:
    """The local-DP mechanism: the manifest's (every client the same), or this client's
    own --dp-scale when the manifest sets none; both at once is refused."""
    if manifest.privacy is not None:
        if plan.dp_scale is not None:
            raise ParameterError(
                "the manifest sets local DP (privacy: laplace_scale "
                f"{manifest.privacy.laplace_scale:g}, clip {manifest.privacy.clip:g}); "
                "drop --dp-scale/--dp-clip: every client applies the manifest's")
        return kind(manifest.privacy.laplace_scale, manifest.privacy.clip)
    return None if plan.dp_scale is None else kind(plan.dp_scale, plan.dp_clip)


def client_learner(manifest: Manifest, party: PartyId, plan: ClientPlan) -> tuple[Any, Any]:
    """Client *party*'s :class:`~threshold_fl.ml.LocalLearner` for the manifest's model,
    under *plan*, and the test split: every process derives the same split and initial
    model from the manifest."""
    from threshold_fl.app.federation import client_learners  # torch: clients only
    from threshold_fl.ml.privacy import LaplaceNoise
    from threshold_fl.ml.training import LocalTraining

    model = manifest.model
    if model is None:
        raise ParameterError(
            "the manifest names no model (it was made with --model-length, for a model of "
            "your own); a threshold-fl client trains a named model: make the manifest with "
            "--model")
    noise = local_dp(manifest, plan, LaplaceNoise)
    training = LocalTraining(epochs=plan.epochs, batch_size=plan.batch_size,
                             learning_rate=plan.learning_rate)
    (learner,), test = client_learners(
        model, len(manifest.clients), [manifest.client_ids.index(party)], training,
        split=plan.split, alpha=plan.alpha, noise=noise,
        sensitivity_samples=plan.sensitivity_samples)
    if learner.length != manifest.model_length:
        raise ParameterError(
            f"model {model.name!r} has {learner.length:,} parameters but the manifest says "
            f"{manifest.model_length:,}; the manifest was edited or made by another version")
    return learner, test
