"""One row per FedAvg round: what the commands print and write as JSON lines.

A client's row carries the global model's test accuracy and loss and its own bytes and
stage times; the aggregator's row its bytes and aggregation time; the in-process
federation and the demo write one row for the whole federation, and report a whole run
as a :class:`RunReport`.  ``threshold-fl
client --report`` and ``aggregator --report`` append rows as JSON lines, which the
demo reads back (with :func:`read_rows`, which checks every field) to draw its table
and plots.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocols.manifest import MaskPolicy
from threshold_fl.errors import ParameterError

if TYPE_CHECKING:
    from protocols import Manifest
    from threshold_fl.ml.privacy import PrivacyBudget

__all__ = ["STAGES", "RoundRow", "RunReport", "combine_rows", "header", "read_rows",
           "setup_words"]

#: Stage times a row may carry: local training, encrypting the own update, the
#: aggregator's homomorphic sum (and blind fusion), a client's decryption share and
#: decoding of the global model.
STAGES = ("train", "encrypt", "aggregate", "decrypt")


def setup_words(fraction: float | None) -> str:
    """What a session does before round 1's training, in words: key agreement, and mask
    agreement below mask fraction 1 (at 1, the default, every party knows the mask)."""
    everything = fraction is None or MaskPolicy(fraction).everything
    return "key agreement" if everything else "key and mask agreement"


@dataclass(frozen=True)
class RoundRow:
    """One round as *party* saw it.  ``seconds`` is wall-clock since the previous row
    (round 1: since the session began, so it includes key agreement and, below mask
    fraction 1, mask agreement);
    ``bytes_sent``/``bytes_received`` likewise.  The aggregator's rows in threshold mode
    also carry the joint decryption: ``decryption_s`` from handing the first
    DecryptRequest to the transport to handing over the Fused broadcast,
    ``attempts``, how many decryption sets were asked, and ``last_set_s``, the part of
    ``decryption_s`` from asking the last of those sets (equal to it with one set)."""

    party: str
    round: int
    seconds: float
    bytes_sent: int
    bytes_received: int
    stage_s: Mapping[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    loss: float | None = None
    encrypted_fraction: float | None = None
    contributors: int | None = None
    decryption_s: float | None = None
    attempts: int | None = None
    last_set_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.party, str) or not self.party:
            raise ParameterError(f"round row: party must be a non-empty string, got {self.party!r}")
        _check_number(self.round, "round", integer=True, minimum=1)
        _check_number(self.seconds, "seconds")
        _check_number(self.bytes_sent, "bytes_sent", integer=True)
        _check_number(self.bytes_received, "bytes_received", integer=True)
        for stage, seconds in self.stage_s.items():
            if stage not in STAGES:
                raise ParameterError(f"round row: unknown stage {stage!r}; stages are {STAGES}")
            _check_number(seconds, f"stage_s[{stage}]")
        for name in ("accuracy", "encrypted_fraction"):
            value = getattr(self, name)
            if value is not None:
                _check_number(value, name, maximum=1.0)
        if self.loss is not None:
            _check_number(self.loss, "loss")
        if self.contributors is not None:
            _check_number(self.contributors, "contributors", integer=True)
        if self.decryption_s is not None:
            _check_number(self.decryption_s, "decryption_s")
        if self.attempts is not None:
            _check_number(self.attempts, "attempts", integer=True, minimum=1)
        if self.last_set_s is not None:
            _check_number(self.last_set_s, "last_set_s")
            if self.decryption_s is None or self.last_set_s > self.decryption_s:
                raise ParameterError("round row: last_set_s needs decryption_s and is part "
                                     f"of it, got {self.last_set_s} of {self.decryption_s}")

    def line(self) -> str:
        """The table row under :func:`header`."""
        def optional(value: float | None, spec: str, width: int) -> str:
            return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}}"

        stages = "  ".join(optional(self.stage_s.get(stage), ".1f", len(stage))
                           for stage in STAGES)
        return (f"{self.party:<10} {self.round:>5}  {optional(self.accuracy, '.2%', 8)}  "
                f"{optional(self.loss, '.4f', 7)}  {optional(self.encrypted_fraction, '.2%', 9)}"
                f"  {self.bytes_sent / 1e6:>8.2f}  {self.bytes_received / 1e6:>8.2f}  {stages}"
                f"  {self.seconds:>7.1f}")

    def as_json(self) -> str:
        data = asdict(self)
        data["stage_s"] = dict(self.stage_s)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> RoundRow:
        """Parse one JSON line; :class:`ParameterError` names what is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ParameterError(f"round row is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ParameterError("round row must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ParameterError(f"round row has unknown fields {sorted(unknown)}")
        if not isinstance(data.get("stage_s", {}), dict):
            raise ParameterError("round row: stage_s must be an object")
        try:
            return cls(**data)
        except TypeError as error:  # a required field is missing
            raise ParameterError(f"round row: {error}") from None


def header() -> str:
    """Column titles for :meth:`RoundRow.line`."""
    stages = "  ".join(f"{stage:>{len(stage)}}" for stage in STAGES)
    return (f"{'party':<10} {'round':>5}  {'accuracy':>8}  {'loss':>7}  {'encrypted':>9}  "
            f"{'MB sent':>8}  {'MB recv':>8}  {stages}  {'round s':>7}")


def _check_number(value: Any, name: str, *, integer: bool = False, minimum: float = 0.0,
                  maximum: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            integer and not isinstance(value, int)):
        raise ParameterError(f"round row: {name} must be a{'n integer' if integer else ' number'}"
                             f", got {value!r}")
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise ParameterError(f"round row: {name} must be in [{minimum}, {maximum}], got {value}")


def read_rows(path: Path) -> list[RoundRow]:
    """Every row of a JSON-lines report (none if the file does not exist yet)."""
    if not path.exists():
        return []
    rows = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            rows.append(RoundRow.from_json(text))
        except ParameterError as error:
            raise ParameterError(f"{path}, line {number}: {error}") from None
    return rows


def combine_rows(party: str, rows: Iterable[RoundRow]) -> RoundRow:
    """One federation-wide row from the parties' rows of one round: bytes add up, each
    stage takes its slowest party (they run in parallel), accuracy and loss come from
    the first row that has them (every client decrypts the same global model), the
    decryption step from the aggregator's.  The
    round's seconds are the shortest party's: round 1 as the last party to be ready
    saw it, which leaves out the other processes' start-up."""
    rows = list(rows)
    if not rows or len({row.round for row in rows}) != 1:
        raise ParameterError("combine_rows needs rows of one round")
    stage_s: dict[str, float] = {}
    for row in rows:
        for stage, seconds in row.stage_s.items():
            stage_s[stage] = max(stage_s.get(stage, 0.0), seconds)
    scored = next((row for row in rows if row.accuracy is not None), None)
    contributors = [row.contributors for row in rows if row.contributors is not None]
    decrypting = next((row for row in rows if row.attempts is not None), None)
    return RoundRow(
        party, rows[0].round, min(row.seconds for row in rows),
        sum(row.bytes_sent for row in rows), sum(row.bytes_received for row in rows), stage_s,
        accuracy=scored.accuracy if scored else None, loss=scored.loss if scored else None,
        encrypted_fraction=scored.encrypted_fraction if scored else None,
        contributors=contributors[0] if contributors else None,
        decryption_s=decrypting.decryption_s if decrypting else None,
        attempts=decrypting.attempts if decrypting else None,
        last_set_s=decrypting.last_set_s if decrypting else None)


@dataclass(frozen=True)
class RunReport:
    """One federation run, in one process (``threshold-fl train``) or as processes (the
    demo): a row per round for the whole federation (bytes summed over the parties, each
    stage's slowest party), each party's own rows (processes only); from the manifest,
    the model's size, the requested mask fraction and how many coordinates the first
    and last layers add to it (0 with ``--no-first-last``); the local-DP budget if any."""

    mode: str
    parameters: int
    seconds: float  # wall-clock, from the start (of the processes) to the end
    rounds: tuple[RoundRow, ...]
    parties: Mapping[str, tuple[RoundRow, ...]] = field(default_factory=dict)
    requested_fraction: float | None = None
    always_encrypted: int = 0
    privacy: PrivacyBudget | None = None

    @classmethod
    def of(cls, manifest: Manifest, seconds: float, rounds: Sequence[RoundRow], *,
           parties: Mapping[str, tuple[RoundRow, ...]] | None = None,
           privacy: PrivacyBudget | None = None) -> RunReport:
        """The report of a run of *manifest*."""
        always = _covered(manifest.always_encrypt) if manifest.mask.first_and_last else 0
        return cls(manifest.mode.value, manifest.model_length, seconds, tuple(rounds),
                   dict(parties or {}), requested_fraction=manifest.mask.fraction,
                   always_encrypted=always, privacy=privacy)

    @property
    def protocol_seconds(self) -> float:
        """The rounds' seconds added up: the session without the processes' start-up."""
        return sum(row.seconds for row in self.rounds)

    @property
    def steady_seconds(self) -> float | None:
        """The seconds of the rounds after the first (round 1 also holds the set-up:
        :attr:`setup`); None with a single round."""
        later = [row.seconds for row in self.rounds if row.round > 1]
        return sum(later) if later else None

    @property
    def setup(self) -> str:
        """What round 1 holds besides a round, in words (:func:`setup_words`)."""
        return setup_words(self.requested_fraction)

    @property
    def encrypted_fraction(self) -> float | None:
        """The share of coordinates the last round encrypted."""
        return self.rounds[-1].encrypted_fraction if self.rounds else None

    @property
    def bytes_sent(self) -> int:
        """Bytes the parties published in their rounds (round 1 includes set-up)."""
        return sum(row.bytes_sent for row in self.rounds)

    @property
    def final_accuracy(self) -> float:
        accuracy = self.rounds[-1].accuracy if self.rounds else None
        return float("nan") if accuracy is None else accuracy

    def to_dict(self) -> dict[str, Any]:
        """The run as JSON-ready data (rows as :meth:`RoundRow.as_json` writes them)."""
        def rows(items: Sequence[RoundRow]) -> list[dict[str, Any]]:
            return [json.loads(row.as_json()) for row in items]

        data = {"mode": self.mode, "parameters": self.parameters, "seconds": self.seconds,
                "protocol_seconds": self.protocol_seconds, "bytes_sent": self.bytes_sent,
                "final_accuracy": self.final_accuracy, "rounds": rows(self.rounds),
                "parties": {party: rows(items) for party, items in self.parties.items()}}
        if self.privacy is not None:
            data["privacy"] = {**asdict(self.privacy), "summary": str(self.privacy)}
        return data


def _covered(ranges: Sequence[tuple[int, int]]) -> int:
    """How many coordinates the [start, stop) *ranges* cover (a one-layer model's first
    and last layers are the same range)."""
    covered, reached = 0, 0
    for start, stop in sorted(ranges):
        covered += max(0, stop - max(start, reached))
        reached = max(reached, stop)
    return covered
