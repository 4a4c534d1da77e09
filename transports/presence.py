"""The presence payload: what a party's retained ``presence`` topic and Last Will say.

``{"party": <id>, "online": <bool>, "ts": <sender's wall clock>}`` as JSON; an empty
payload (a cleared retained message) means offline.  Pure functions, no I/O: the MQTT
transport publishes and reads them.
"""

from __future__ import annotations

import json

from threshold_fl.errors import ParameterError
from transports.frames import validate_id

__all__ = ["parse_presence", "presence_payload"]


def presence_payload(party: str, online: bool, ts: float) -> bytes:
    """The payload announcing *party* online or offline at wall-clock time *ts*."""
    return json.dumps({"party": party, "online": online, "ts": ts}).encode()


def parse_presence(party: str, payload: bytes) -> bool | None:
    """Whether *payload*, read on *party*'s presence topic, says online; None when it is
    malformed or names another party (the broker is not trusted to keep them apart)."""
    try:
        info = json.loads(payload) if payload else {"party": party, "online": False}
        online = info["online"] is True
        valid = info["party"] == party and validate_id("party id", party) == party
    except (ValueError, KeyError, TypeError, ParameterError):
        return None
    return online if valid else None
