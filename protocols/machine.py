"""What every role's state machine shares: authentication, dispatch, sending, deadlines.

A machine is fed bytes and the current time and returns a :class:`Step`.  A message
is first authenticated (signature against the manifest), then checked for session
and recipient, then handed to the handler that the transition table names for the
current state.  Handlers check everything before they change anything, so a
rejected message (any :class:`MessageRejected`) leaves the machine as it was.
"""

from __future__ import annotations

import abc
import contextlib
import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from protocols.codec import decode_message, encode_message
from protocols.events import Event, Outgoing, Step
from protocols.manifest import Manifest, Role
from protocols.messages import Abort, Body, Header, Message, Stage
from protocols.session import refuse_mask_stage
from threshold_fl.crypto.context import CkksContext, context_for
from threshold_fl.errors import (
    DuplicateMessage,
    ForgedMessage,
    MalformedMessage,
    MessageRejected,
    ParameterError,
    StaleMessage,
    ThresholdFLError,
    UnexpectedMessage,
)
from threshold_fl.identity import Identity, PartyId

__all__ = ["Machine", "Randomness", "UndeclaredTransition"]

#: Source of random bytes, passed in (e.g. ``os.urandom``) so machines stay deterministic.
Randomness = Callable[[int], bytes]

S = TypeVar("S", bound=enum.Enum)
K = TypeVar("K")
_NAMES_SHOWN = 8  # parties named in a progress line; a hundred names help nobody
Handler = Callable[[Any, Message, float], Step]


class UndeclaredTransition(AssertionError):
    """A handler moved to a state its targets table does not name: a bug in the code
    or in the table (never the peer's fault, so not a MessageRejected)."""


class Machine(abc.ABC, Generic[S]):
    """Base of the role machines; subclasses fill ``TRANSITIONS`` and the handlers."""

    ROLE: ClassVar[Role]
    #: state -> body type -> handler: every acceptable (state, message) pair, in one place.
    TRANSITIONS: ClassVar[Mapping[Any, Mapping[type, Handler]]]
    TERMINAL: ClassVar[frozenset[Any]]
    #: state -> body type -> states the handler may move to (protocols/states.py).
    TARGETS: ClassVar[Mapping[Any, Mapping[type, frozenset[Any]]]]
    #: method outside the table (start, deadline, abort...) -> states it may move to.
    OTHER_TARGETS: ClassVar[Mapping[str, frozenset[Any]]]

    def __init__(
        self, manifest: Manifest, identity: Identity, randomness: Randomness, state: S
    ) -> None:
        if manifest.role_of(identity.party_id) is not self.ROLE:
            raise ParameterError(
                f"{identity.party_id!r} is a {manifest.role_of(identity.party_id).value} in "
                f"this manifest, not a {self.ROLE.value}"
            )
        if manifest.directory[identity.party_id] != identity.public:
            raise ParameterError(
                f"the identity of {identity.party_id!r} does not match its manifest entry "
                "(wrong key file or stale manifest)"
            )
        self.manifest = manifest
        self.me = identity.party_id
        self._identity = identity
        self._randomness = randomness
        self._directory = manifest.directory
        self._context_cache: CkksContext | None = None
        self.state: S = state
        self._deadline: float | None = None
        # One slot per dispatch under way: the state it had reached when a nested one
        # (a replayed early message) began, so each is checked for its own move only.
        self._reached: list[S | None] = []

    @property
    def context(self) -> CkksContext:
        if self._context_cache is None:
            self._context_cache = context_for(self.manifest.params)
        return self._context_cache

    # -- feeding -------------------------------------------------------------------
    def receive(self, data: bytes, now: float) -> Step:
        """Authenticate and handle one message; raises MessageRejected (state unchanged)."""
        message = decode_message(data, self._directory)  # keeps the signed bytes for relays
        try:
            self._check_addressing(message)
            return self.handle(message, now)
        except MessageRejected as exc:
            exc.sender = message.header.sender  # authenticated: safe to name and blame
            raise

    def handle(self, message: Message, now: float) -> Step:
        """Handle an already authenticated message (``receive`` is the public entry)."""
        if isinstance(message.body, Abort):
            targets = self.OTHER_TARGETS["_on_abort"]
            return self._checked(targets, message.kind, lambda: self._on_abort(message, now))
        refuse_mask_stage(self.manifest, message)  # at mask fraction 1 there is no such stage
        handlers = self.TRANSITIONS.get(self.state, {})
        handler = handlers.get(type(message.body))
        if handler is None:
            raise UnexpectedMessage(
                f"{message.kind} from {message.header.sender!r} is not expected while "
                f"{self.ROLE.value} {self.me!r} is in state {self.state.name}; discarded"
            )
        targets = self.TARGETS[self.state][type(message.body)]
        try:
            return self._checked(targets, message.kind, lambda: handler(self, message, now))
        except MessageRejected:
            raise
        except ThresholdFLError as exc:  # a crypto or frame check failed: the content is bad
            raise MalformedMessage(
                f"{message.kind} from {message.header.sender!r} failed a check: {exc}"
            ) from None

    def waiting_for(self) -> str:
        """What this party waits for now, in words (for progress lines); roles refine it."""
        return str(self.state.value)

    @staticmethod
    def _waiting(what: str, missing: Sequence[str], of: int) -> str:
        """"waiting for 2 of 3 clients to join: 'a', 'b'", with long lists cut short."""
        shown = ", ".join(repr(party) for party in missing[:_NAMES_SHOWN])
        more = len(missing) - _NAMES_SHOWN
        names = f"{shown} and {more} more" if more > 0 else shown
        return f"waiting for {len(missing)} of {of} {what}: {names}"

    def next_deadline(self) -> float | None:
        """When :meth:`on_deadline` must be called next (None: nothing is timed)."""
        return None if self.state in self.TERMINAL else self._deadline

    def on_deadline(self, now: float) -> Step:
        """Call when ``next_deadline()`` has passed; early calls do nothing."""
        if self._deadline is None or now < self._deadline or self.state in self.TERMINAL:
            return Step()
        self._deadline = None
        targets = self.OTHER_TARGETS["_deadline_passed"]
        return self._checked(targets, "the deadline", lambda: self._deadline_passed(now))

    def _checked(self, targets: frozenset[Any], cause: str, run: Callable[[], Step]) -> Step:
        """Run a transition; raise UndeclaredTransition if it moved outside ``targets``."""
        if self._reached and self._reached[-1] is None:
            self._reached[-1] = self.state  # the outer dispatch's own move ends here
        before = self.state
        self._reached.append(None)
        try:
            step = run()
        finally:
            reached = self._reached.pop()
        after = self.state if reached is None else reached
        if after is not before and after not in targets:
            raise UndeclaredTransition(
                f"{type(self).__name__} {self.me!r} moved from {before.name} to {after.name} "
                f"on {cause}, a target its table does not declare"
            )
        return step

    @abc.abstractmethod
    def _deadline_passed(self, now: float) -> Step:
        """What the role does when its deadline passes (drop, retry, abort...)."""

    @abc.abstractmethod
    def _on_abort(self, message: Message, now: float) -> Step:
        """What the role does with an Abort (accepted in any state that may receive it)."""

    # -- checks --------------------------------------------------------------------
    def _check_addressing(self, message: Message) -> None:
        header = message.header
        if header.session != self.manifest.session:
            raise StaleMessage(
                f"message for session {header.session!r}, this is {self.manifest.session!r}; "
                "discarded"
            )
        if header.recipient not in (self.me, "*") and self.ROLE is not Role.AGGREGATOR:
            raise ForgedMessage(
                f"message for {header.recipient!r} delivered to {self.me!r}; discarded"
            )

    @staticmethod
    def _require_step(message: Message, step: tuple[Stage, int, int, int]) -> None:
        if message.header.step != step:
            stage, epoch, round_, attempt = message.header.step
            raise StaleMessage(
                f"{message.kind} from {message.header.sender!r} is for stage {stage.name}, "
                f"epoch {epoch}, round {round_}, attempt {attempt}; the current step is "
                f"{step[0].name}, epoch {step[1]}, round {step[2]}, attempt {step[3]}: a late "
                "or replayed message, discarded"
            )

    @staticmethod
    def _require_sender(message: Message, allowed: Sequence[str], what: str) -> None:
        if message.header.sender not in allowed:
            raise ForgedMessage(
                f"{message.kind} from {message.header.sender!r}, who is not {what}; discarded"
            )

    @staticmethod
    def _require_new(seen: Collection[K], key: K, message: Message) -> None:
        if key in seen:
            raise DuplicateMessage(
                f"a second {message.kind} from {message.header.sender!r} for this step; "
                "discarded"
            )

    # -- messages that overtook the one they depend on ----------------------------------
    @staticmethod
    def _keep_early(kept: list[Message], message: Message, limit: int, what: str) -> Step:
        """Hold ``message`` until what it follows arrives (bounded, no duplicates)."""
        if any(m.header == message.header and m.body == message.body for m in kept):
            raise DuplicateMessage(f"the same early {message.kind} twice; discarded")
        if len(kept) >= limit:
            raise UnexpectedMessage(f"too many messages ahead of {what}; discarded")
        kept.append(message)
        return Step()

    def _replay(self, kept: list[Message], step: Step, now: float) -> Step:
        """Handle held messages now that they can be; those still out of place are
        dropped (they are rejected as they would have been on arrival)."""
        held = list(kept)
        kept.clear()  # a message still early is kept again by its handler
        for message in held:
            with contextlib.suppress(MessageRejected):
                step.extend(self.handle(message, now))
        return step

    # -- sending -------------------------------------------------------------------
    def _header(self, addressed: str, step: tuple[Stage, int, int, int]) -> Header:
        stage, epoch, round_, attempt = step
        return Header(self.manifest.session, self.me, addressed, stage, epoch, round_, attempt)

    def _send(
        self,
        to: Sequence[PartyId],
        body: Body,
        step: tuple[Stage, int, int, int],
        *,
        addressed: str | None = None,
    ) -> Outgoing:
        """One signed message handed to the transport for ``to``.

        ``addressed`` is the recipient named in the header: BROADCAST ("*"), or a client
        the aggregator relays to; by default the single transport recipient.
        """
        if addressed is None:
            if len(to) != 1:
                raise ValueError("name the header recipient of a message sent to several")
            addressed = to[0]
        header = self._header(addressed, step)
        data = encode_message(self._identity, Message(header, body))
        return Outgoing(tuple(to), data, type(body).__name__)

    def _sends(
        self, recipients: Sequence[PartyId], body: Body, step: tuple[Stage, int, int, int]
    ) -> list[Outgoing]:
        """The same body signed separately for each recipient (so none can be re-aimed)."""
        return [self._send([recipient], body, step) for recipient in recipients]

    @staticmethod
    def _events(*events: Event) -> Step:
        return Step(events=list(events))



