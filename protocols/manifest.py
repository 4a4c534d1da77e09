"""The federation manifest: who takes part, with which keys, settings and deadlines.

Every party loads the same manifest file; compare :meth:`Manifest.fingerprint` out
of band when distributing it.  ``Hello`` and ``KeygenStart`` carry the sender's
fingerprint too, so a party with a different copy is refused as soon as it joins
(:meth:`Manifest.mismatch` says why, naming both fingerprints).  The
manifest crosses a trust boundary (it is a file), so :meth:`Manifest.from_dict`
validates everything before use.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from threshold_fl.crypto.params import MAX_VECTOR_LENGTH, CkksParams
from threshold_fl.errors import (
    ManifestError,
    ManifestMismatch,
    ParameterError,
    SessionAborted,
    ThresholdFLError,
)
from threshold_fl.identity import PartyId, PublicIdentity

if TYPE_CHECKING:
    from threshold_fl.ml.models import ModelShape

__all__ = ["MISMATCH", "Manifest", "MaskPolicy", "Mode", "ModelSpec", "Role", "Timeouts",
           "abort_error", "make_manifest"]

#: How every refusal for another manifest begins (:meth:`Manifest.mismatch`).
MISMATCH = "manifest mismatch: "


def abort_error(reason: str) -> type[SessionAborted]:
    """What a party raises for an abort with *reason*: ManifestMismatch for a refusal by
    :meth:`Manifest.mismatch` (its peer runs another manifest), else SessionAborted."""
    return ManifestMismatch if reason.startswith(MISMATCH) else SessionAborted

_FORMAT = "threshold-fl-manifest"
_VERSION = 1
_SESSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_CLIENTS = 1000
_MAX_ROUNDS = 100_000
_MAX_FILE_BYTES = 16 * 2**20
_MODEL_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_MAX_SEED = 2**31 - 1


class Mode(str, Enum):
    """How the protected coordinates are protected."""

    THRESHOLD = "threshold"  # joint key, t-of-N joint decryption by blind fusion (default)
    SINGLE_KEY = "single-key"  # a key authority hands one secret key to every client
    PLAINTEXT = "plaintext"  # no encryption: the baseline


class Role(str, Enum):
    AGGREGATOR = "aggregator"
    CLIENT = "client"
    KEY_AUTHORITY = "key-authority"


@dataclass(frozen=True)
class Timeouts:
    """Deadlines in seconds, enforced by the aggregator (clients give up after
    :attr:`client_patience_s` of silence from it)."""

    join_s: float = 60.0  # clients say hello
    keys_s: float = 60.0  # one key agreement
    upload_s: float = 600.0  # train and upload (mask stage: compute and upload the map)
    decrypt_s: float = 120.0  # decryption shares (per attempt), confirmations

    def __post_init__(self) -> None:
        for name in ("join_s", "keys_s", "upload_s", "decrypt_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ManifestError(f"timeout {name} must be a number of seconds, got {value!r}")
            if not (math.isfinite(value) and 0 < value <= 7 * 86400):
                raise ManifestError(f"timeout {name} must be in (0, 604800] seconds, got {value}")

    @property
    def client_patience_s(self) -> float:
        """How long a client waits for the aggregator before it aborts."""
        return 2 * (self.keys_s + self.upload_s + 2 * self.decrypt_s)


@dataclass(frozen=True)
class MaskPolicy:
    """Which coordinates are encrypted: the top ``fraction`` of the aggregated
    sensitivity map, plus the model's first and last layers if asked.  The default
    encrypts everything: selective encryption (fraction below 1) left training images
    recoverable from the plaintext part in the measurements of docs/privacy.md."""

    fraction: float = 1.0
    first_and_last: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, int | float):
            raise ManifestError(f"mask fraction must be a number, got {self.fraction!r}")
        if not 0.0 <= self.fraction <= 1.0:
            raise ManifestError(f"mask fraction must be in [0, 1], got {self.fraction}")
        if not isinstance(self.first_and_last, bool):
            raise ManifestError("mask first_and_last must be true or false")

    @property
    def everything(self) -> bool:
        """Fraction 1: every coordinate is encrypted, so every party knows the mask (all
        ones) from the manifest and the session has no mask agreement."""
        return self.fraction == 1.0


@dataclass(frozen=True)
class LocalPrivacy:
    """Local DP every client applies to the plaintext coordinates of its upload: clip
    each to the round's start model +- ``clip``, add Laplace(``laplace_scale``) noise
    (:class:`threshold_fl.ml.privacy.LaplaceNoise`).  In the manifest, so it is bound into
    the fingerprint and every client applies the same mechanism."""

    laplace_scale: float
    clip: float

    def __post_init__(self) -> None:
        for name in ("laplace_scale", "clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value > 0):
                raise ManifestError(f"privacy {name} must be a finite number > 0, "
                                    f"got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {"laplace_scale": self.laplace_scale, "clip": self.clip}


@dataclass(frozen=True)
class ModelSpec:
    """The model every client trains: a name from :data:`threshold_fl.ml.models.MODELS`
    and the seed of its initial weights and of the data split, so every client process
    starts from the same model and takes its own part of the same split."""

    name: str
    data_seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or _MODEL_NAME_RE.fullmatch(self.name) is None:
            raise ManifestError(f"model name {self.name!r}: use 1-32 of [a-z0-9_-]")
        if not _is_int(self.data_seed) or not 0 <= self.data_seed <= _MAX_SEED:
            raise ManifestError(f"model data_seed must be in 0..{_MAX_SEED}, "
                                f"got {self.data_seed!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data_seed": self.data_seed}

    @classmethod
    def from_dict(cls, data: object) -> ModelSpec:
        if not isinstance(data, dict) or set(data) - {"name", "data_seed"}:
            raise ManifestError(f"model must be an object with name and data_seed, got {data!r}")
        return cls(data.get("name"), data.get("data_seed", 0))  # type: ignore[arg-type]

    def shape(self) -> ModelShape:
        """Length and first and last layers (builds the model: imports torch)."""
        from threshold_fl.ml.models import model_shape

        try:
            return model_shape(self.name)
        except ParameterError as exc:
            raise ManifestError(f"manifest model: {exc}") from None


@dataclass(frozen=True, eq=False)
class Manifest:
    """Everything the parties of one session must agree on."""

    session: str
    mode: Mode
    aggregator: PublicIdentity
    clients: tuple[PublicIdentity, ...]
    key_authority: PublicIdentity | None
    threshold: int
    rounds: int
    params: CkksParams
    model_length: int
    always_encrypt: tuple[tuple[int, int], ...] = ()  # flat ranges (first and last layers)
    mask: MaskPolicy = field(default_factory=MaskPolicy)
    timeouts: Timeouts = field(default_factory=Timeouts)
    model: ModelSpec | None = None  # None: an embedding application's own model
    privacy: LocalPrivacy | None = None  # None: no local DP

    def __post_init__(self) -> None:
        try:
            self._validate()
        except ManifestError:
            raise
        except (ThresholdFLError, TypeError, ValueError) as exc:
            raise ManifestError(f"invalid manifest: {exc}") from None

    def _validate(self) -> None:
        if not isinstance(self.session, str) or _SESSION_RE.fullmatch(self.session) is None:
            raise ManifestError(f"session id {self.session!r}: use 1-64 of [A-Za-z0-9_.-]")
        if not 1 <= len(self.clients) <= _MAX_CLIENTS:
            raise ManifestError(f"a federation needs 1 to {_MAX_CLIENTS} clients")
        ids = [party.party_id for party in self.parties]
        if len(set(ids)) != len(ids):
            raise ManifestError(f"party ids must be unique across roles, got {sorted(ids)}")
        if [c.party_id for c in self.clients] != sorted(c.party_id for c in self.clients):
            raise ManifestError("clients must be listed sorted by party id")
        if (self.mode is Mode.SINGLE_KEY) != (self.key_authority is not None):
            raise ManifestError("a key authority is required in single-key mode and only there")
        self._validate_threshold()
        if not _is_int(self.rounds) or not 1 <= self.rounds <= _MAX_ROUNDS:
            raise ManifestError(f"rounds must be in 1..{_MAX_ROUNDS}, got {self.rounds!r}")
        if not _is_int(self.model_length) or not 1 <= self.model_length <= MAX_VECTOR_LENGTH:
            raise ManifestError(f"model_length must be in 1..{MAX_VECTOR_LENGTH}")
        if self.model is not None and not isinstance(self.model, ModelSpec):
            raise ManifestError(f"model must be a ModelSpec or None, got {self.model!r}")
        if self.privacy is not None and not isinstance(self.privacy, LocalPrivacy):
            raise ManifestError(f"privacy must be a LocalPrivacy or None, got {self.privacy!r}")
        for start, stop in self.always_encrypt:
            if not (_is_int(start) and _is_int(stop)) or not (
                0 <= start <= stop <= self.model_length
            ):
                raise ManifestError(f"always_encrypt range [{start}, {stop}) is outside the model")

    def _validate_threshold(self) -> None:
        count = len(self.clients)
        if not isinstance(self.threshold, int) or isinstance(self.threshold, bool):
            raise ManifestError(f"threshold must be an integer, got {self.threshold!r}")
        if self.mode is Mode.THRESHOLD:
            if count < 2:
                raise ManifestError("threshold mode needs at least 2 clients")
            if not count / 2 < self.threshold <= count:
                raise ManifestError(
                    f"threshold t={self.threshold} must satisfy N/2 < t <= N for N={count} "
                    "clients (t-of-N decryption assumes an honest majority of key holders)"
                )
        elif not 1 <= self.threshold <= count:
            raise ManifestError(
                f"min clients t={self.threshold} must be in 1..{count} for N={count}"
            )

    # -- lookups --------------------------------------------------------------------
    @property
    def parties(self) -> tuple[PublicIdentity, ...]:
        others = (self.key_authority,) if self.key_authority is not None else ()
        return (self.aggregator, *self.clients, *others)

    @property
    def client_ids(self) -> tuple[PartyId, ...]:
        return tuple(client.party_id for client in self.clients)

    @property
    def directory(self) -> Mapping[PartyId, PublicIdentity]:
        return {party.party_id: party for party in self.parties}

    def role_of(self, party_id: str) -> Role:
        if party_id == self.aggregator.party_id:
            return Role.AGGREGATOR
        if self.key_authority is not None and party_id == self.key_authority.party_id:
            return Role.KEY_AUTHORITY
        if party_id in self.client_ids:
            return Role.CLIENT
        raise ManifestError(f"party {party_id!r} is not in manifest {self.session!r}")

    def fingerprint(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"threshold-fl/manifest/v1\0" + canonical.encode()).hexdigest()

    def mismatch(self, me: str, party: str, theirs: str) -> str | None:
        """Why *party*, whose message carries manifest fingerprint *theirs*, cannot take
        part with *me* (who runs this manifest); None when both run this manifest."""
        mine = self.fingerprint()
        if theirs == mine:
            return None
        return (f"{MISMATCH}{party!r} runs manifest fingerprint {theirs[:16]}, {me!r} "
                f"runs {mine[:16]} (session {self.session!r}); every party must run "
                "the same manifest file: get it again from the organiser (or regenerate and "
                "redistribute it) and restart with it")

    # -- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        # "model" is left out when there is none, so such manifests keep their fingerprint.
        named = {} if self.model is None else {"model": self.model.to_dict()}
        if self.privacy is not None:  # likewise left out when there is none
            named["privacy"] = self.privacy.to_dict()
        return {
            **named,
            "format": _FORMAT,
            "version": _VERSION,
            "session": self.session,
            "mode": self.mode.value,
            "aggregator": self.aggregator.to_dict(),
            "clients": [client.to_dict() for client in self.clients],
            "key_authority": None if self.key_authority is None else self.key_authority.to_dict(),
            "threshold": self.threshold,
            "rounds": self.rounds,
            "params": self.params.to_dict(),
            "model_length": self.model_length,
            "always_encrypt": [list(pair) for pair in self.always_encrypt],
            "mask": {"fraction": self.mask.fraction, "first_and_last": self.mask.first_and_last},
            "timeouts": vars(self.timeouts).copy(),
        }

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        """Validate and build a manifest from untrusted data (e.g. parsed JSON)."""
        if not isinstance(data, dict):
            raise ManifestError(f"a manifest must be a JSON object, got {type(data).__name__}")
        if data.get("format") != _FORMAT or not _is_int(data.get("version")) or (
            data.get("version") != _VERSION
        ):
            raise ManifestError(
                f"not a {_FORMAT} version {_VERSION} file (format={data.get('format')!r}, "
                f"version={data.get('version')!r})"
            )
        try:
            return cls(**_fields_from(data))
        except ManifestError:
            raise
        except (ThresholdFLError, KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"invalid manifest: {exc!s}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ManifestError(f"manifest is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: Path | str) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        file = Path(path)
        try:
            if file.stat().st_size > _MAX_FILE_BYTES:
                raise ManifestError(f"{file} is larger than {_MAX_FILE_BYTES} bytes")
            return cls.from_json(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ManifestError(f"cannot read manifest {file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ManifestError(f"manifest {file} is not UTF-8 text") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fields_from(data: Mapping[str, Any]) -> dict[str, Any]:
    known = {
        "format", "version", "session", "mode", "aggregator", "clients", "key_authority",
        "threshold", "rounds", "params", "model_length", "always_encrypt", "mask", "timeouts",
        "model", "privacy",
    }
    unknown = set(data) - known
    if unknown:
        raise ManifestError(f"unknown manifest field(s): {', '.join(sorted(map(str, unknown)))}")
    authority = data.get("key_authority")
    return {
        "session": data["session"],
        "mode": Mode(data["mode"]),
        "aggregator": PublicIdentity.from_dict(data["aggregator"]),
        "clients": tuple(PublicIdentity.from_dict(item) for item in data["clients"]),
        "key_authority": None if authority is None else PublicIdentity.from_dict(authority),
        "threshold": data["threshold"],
        "rounds": data["rounds"],
        "params": CkksParams.from_dict(data["params"]),
        "model_length": data["model_length"],
        "always_encrypt": tuple(_pair(item) for item in data.get("always_encrypt", [])),
        "mask": MaskPolicy(**data.get("mask", {})),
        "timeouts": Timeouts(**data.get("timeouts", {})),
        "model": None if data.get("model") is None else ModelSpec.from_dict(data["model"]),
        "privacy": _privacy(data.get("privacy")),
    }


def _privacy(item: object) -> LocalPrivacy | None:
    if item is None:
        return None
    if not isinstance(item, dict) or set(item) != {"laplace_scale", "clip"}:
        raise ManifestError("privacy must be {\"laplace_scale\": b, \"clip\": C}, "
                            f"got {item!r}")
    return LocalPrivacy(item["laplace_scale"], item["clip"])


def _pair(item: object) -> tuple[int, int]:
    if not (isinstance(item, list) and len(item) == 2):
        raise ManifestError(f"always_encrypt entries are [start, stop] pairs, got {item!r}")
    return (item[0], item[1])


def make_manifest(
    *,
    session: str,
    aggregator: PublicIdentity,
    clients: Sequence[PublicIdentity],
    model: ModelSpec | None = None,
    model_length: int | None = None,
    mode: Mode | str = Mode.THRESHOLD,
    key_authority: PublicIdentity | None = None,
    threshold: int | None = None,
    rounds: int = 3,
    params: CkksParams | None = None,
    always_encrypt: Sequence[tuple[int, int]] = (),
    mask: MaskPolicy | None = None,
    timeouts: Timeouts | None = None,
    privacy: LocalPrivacy | None = None,
) -> Manifest:
    """A manifest with sensible defaults: t = floor(N/2) + 1 in threshold mode (the
    smallest honest majority), noise-flooded CKKS parameters sized for N parties.

    Name the model one of two ways: *model*, a model of the registry, whose length and
    first and last layers are read from it (this builds it, importing torch); or
    *model_length* (and *always_encrypt*) for a model of your own."""
    model_length, always_encrypt = _model_facts(model, model_length, always_encrypt)
    try:
        mode = Mode(mode)
    except ValueError:
        known = [m.value for m in Mode]
        raise ManifestError(f"unknown mode {mode!r}; use one of {known}") from None
    ordered = tuple(sorted(clients, key=lambda party: party.party_id))
    count = len(ordered)
    if threshold is None:
        threshold = count // 2 + 1 if mode is Mode.THRESHOLD else 1
    if params is None:
        params = _default_params(mode, count)
    return Manifest(
        session=session,
        mode=mode,
        aggregator=aggregator,
        clients=ordered,
        key_authority=key_authority,
        threshold=threshold,
        rounds=rounds,
        params=params,
        model_length=model_length,
        always_encrypt=tuple(always_encrypt),
        mask=mask or MaskPolicy(),
        timeouts=timeouts or Timeouts(),
        model=model,
        privacy=privacy,
    )


def _model_facts(model: ModelSpec | None, length: int | None,
                 always_encrypt: Sequence[tuple[int, int]]
                 ) -> tuple[int, Sequence[tuple[int, int]]]:
    if (model is None) == (length is None):
        raise ManifestError("name the model (a ModelSpec) or give model_length, not both")
    if model is None:
        assert length is not None
        return length, always_encrypt
    if always_encrypt:
        raise ManifestError("always_encrypt comes from the named model; do not pass it too")
    shape = model.shape()
    return shape.length, shape.first_and_last


def _default_params(mode: Mode, count: int) -> CkksParams:
    if mode is not Mode.THRESHOLD or count < 2:
        return CkksParams()
    from threshold_fl.crypto.context import threshold_params  # imports OpenFHE

    try:
        return threshold_params(count)
    except ParameterError as exc:
        raise ManifestError(f"no CKKS parameters for {count} parties: {exc}") from None
