"""The presence payload the MQTT transport publishes (retained, and as its Last Will)."""

from __future__ import annotations

import json

import pytest

from transports.presence import parse_presence, presence_payload


@pytest.mark.parametrize("online", [True, False])
def test_a_payload_reads_back_as_it_was_written(online: bool) -> None:
    payload = presence_payload("client-1", online, 1.5)
    assert json.loads(payload) == {"party": "client-1", "online": online, "ts": 1.5}
    assert parse_presence("client-1", payload) is online


def test_an_empty_payload_is_offline() -> None:
    # A cleared retained message: the party is gone.
    assert parse_presence("client-1", b"") is False


@pytest.mark.parametrize("payload", [
    b"not json", b"[]", b"{}", b'{"online": true}', b'{"party": "client-1"}',
    b'{"party": "client-2", "online": true}',  # another party's presence on this topic
    b'{"party": 7, "online": true}', b"\xff\xfe",
])
def test_malformed_or_mismatched_payloads_are_refused(payload: bytes) -> None:
    assert parse_presence("client-1", payload) is None


def test_only_a_true_online_is_online() -> None:
    assert parse_presence("c1", b'{"party": "c1", "online": "yes"}') is False
    assert parse_presence("c1", b'{"party": "c1", "online": 1}') is False


def test_an_invalid_party_id_is_refused() -> None:
    bad = "bad/id"
    assert parse_presence(bad, presence_payload(bad, True, 0.0)) is None
