"""The stage-time model's arithmetic against hand-computed cases, and the trace it reads."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from protocols.codec import encode_message, peek_step
from protocols.messages import Header, Hello, KeygenStart, Message, Stage
from tests.protocol_harness import identity
from threshold_fl.app.trace import PRESENCE, TraceEvent, TracingLink, read_trace
from threshold_fl.bench.linkmodel import (
    AGGREGATOR,
    SCENARIOS,
    UNLIMITED,
    Delivery,
    Hop,
    Link,
    hop_seconds,
    phases_of,
    predict,
)
from threshold_fl.bench.network import compare, totals
from threshold_fl.bench.network import main as network_main
from threshold_fl.errors import ParameterError
from threshold_fl.identity import PartyId
from transports import MemoryHub

MIB = 1 << 20


def test_one_small_message_crosses_the_shared_link_twice() -> None:
    # 1 MB at 8 Mbit/s up to the broker (1 s), then the same message down (1 s):
    # the broker forwards a message only once it has all of it
    link = Link("shared", 8e6, None, 0.0, efficiency=1.0)
    assert hop_seconds([Delivery("c1", AGGREGATOR, 1_000_000)], link) == pytest.approx(2.0)


def test_uploads_share_the_broker_link_and_pipeline_by_chunk() -> None:
    # 3 x 2 MiB through an 80 Mbit/s broker link: 6 MiB * 8 / 80e6 s, plus the last
    # 1 MiB chunk's way down
    link = Link("shared", 80e6, None, 0.0, efficiency=1.0)
    uploads = [Delivery(f"c{i}", AGGREGATOR, 2 * MIB) for i in range(3)]
    assert hop_seconds(uploads, link) == pytest.approx(6 * MIB * 8 / 80e6 + MIB * 8 / 80e6)


def test_each_frame_waits_a_round_trip_for_its_puback() -> None:
    # 10 MiB on 1 Gbit/s links with a 100 ms round trip: 11 frames (a manifest and 10
    # chunks), each published after the previous one's PUBACK: 0.0839 s + 11 x 0.1 s;
    # then half a round trip and one chunk down
    link = Link("far", 1e9, 1e9, 0.1, efficiency=1.0)
    expected = 10 * MIB * 8 / 1e9 + 11 * 0.1 + 0.05 + MIB * 8 / 1e9
    assert hop_seconds([Delivery("c1", AGGREGATOR, 10 * MIB)], link) == pytest.approx(expected)


def test_on_a_shared_link_each_frame_still_crosses_it_before_its_puback() -> None:
    # the aggregator sends 3 x 2 MiB over the broker's 80 Mbit/s link, which the
    # parties share, 50 ms round trip: 9 frames (3 manifests, 6 chunks), each its
    # transmission and a round trip: 6 MiB * 8 / 80e6 + 9 x 0.05; then half a round
    # trip and a chunk down
    link = Link("shared", 80e6, None, 0.05, efficiency=1.0)
    fused = [Delivery(AGGREGATOR, f"c{i}", 2 * MIB) for i in range(3)]
    expected = 6 * MIB * 8 / 80e6 + 9 * 0.05 + 0.025 + MIB * 8 / 80e6
    assert hop_seconds(fused, link) == pytest.approx(expected)


def test_a_broadcast_is_bound_by_the_senders_own_link() -> None:
    # the aggregator sends 1 MiB to each of 4 clients over its 100 Mbit/s link (the
    # broker's 1 Gbit/s is not the limit): 4 MiB * 8 / 100e6, then one chunk down
    link = Link("star", 1e9, 100e6, 0.0, efficiency=1.0)
    fused = [Delivery(AGGREGATOR, f"c{i}", MIB) for i in range(4)]
    assert hop_seconds(fused, link) == pytest.approx(4 * MIB * 8 / 100e6 + MIB * 8 / 100e6)


def test_the_end_to_end_window_binds_on_a_long_round_trip() -> None:
    # 40 frames to one recipient, 1 s round trip, a fast link: with window 8 the
    # window allows them in 5 x 2 round trips = 10 s, and the 40 PUBACK round trips
    # (40 s) bind; with window 1 the window binds (40 x 2 round trips = 80 s)
    link = Link("slow-rtt", 1e12, 1e12, 1.0, efficiency=1.0)
    transfer = [Delivery(AGGREGATOR, "c1", 39 * MIB)]  # 1 manifest + 39 chunks
    tail = 0.5 + MIB * 8 / 1e12
    assert hop_seconds(transfer, link) == pytest.approx(40 * 1.0 + 39 * MIB * 8 / 1e12 + tail)
    assert hop_seconds(transfer, link, window=1) == pytest.approx(80.0 + tail)


def test_messages_ready_earlier_use_the_link_while_others_compute() -> None:
    # two 1 MB uploads on a shared 8 Mbit/s link: each takes 1 s up and 1 s down alone
    # (2 s), both together 2 s up and 1 s down (3 s)
    link = Link("shared", 8e6, None, 0.0, efficiency=1.0)
    uploads = (Delivery("c1", AGGREGATOR, 1_000_000), Delivery("c2", AGGREGATOR, 1_000_000))
    # c2 ready 5 s after c1: c1's upload is long done, only c2's own 2 s count
    assert Hop("UpdateUpload", uploads, (0.0, 5.0)).seconds(link) == pytest.approx(2.0)
    # 0.5 s apart: they queue; 3 s from c1's readiness, 2.5 s from c2's
    assert Hop("UpdateUpload", uploads, (0.0, 0.5)).seconds(link) == pytest.approx(2.5)
    # at once (or no times): the hop as a whole
    assert Hop("UpdateUpload", uploads, (1.0, 1.0)).seconds(link) == pytest.approx(3.0)
    assert Hop("UpdateUpload", uploads).seconds(link) == pytest.approx(3.0)
    with pytest.raises(ParameterError, match="1 times for 2 messages"):
        Hop("UpdateUpload", uploads, (0.0,))


def test_wire_efficiency_scales_the_transmission() -> None:
    link = Link("shared", 8e6, None, 0.0)  # default: 1448 of 1514 bytes are payload
    assert hop_seconds([Delivery("c1", AGGREGATOR, 1_000_000)], link) == pytest.approx(
        2.0 * 1514 / 1448)


def test_no_messages_no_time_and_unlimited_is_free() -> None:
    assert hop_seconds([], SCENARIOS["region"]) == 0.0
    assert hop_seconds([Delivery("c1", AGGREGATOR, 5 * MIB)], UNLIMITED) == 0.0


@pytest.mark.parametrize("bad", [
    {"broker_bit_s": 0.0}, {"party_bit_s": -1.0}, {"rtt_s": -0.1}, {"rtt_s": math.nan},
    {"efficiency": 0.0}, {"efficiency": 1.5}])
def test_links_are_checked(bad: dict[str, float]) -> None:
    settings = {"broker_bit_s": 1e6, "party_bit_s": None, "rtt_s": 0.0, "efficiency": 0.9,
                **bad}
    with pytest.raises(ParameterError, match="link 'x'"):
        Link("x", **settings)  # type: ignore[arg-type]


def _event(t: float, event: str, kind: str, stage: str, peers: tuple[str, ...],
           size: int, round_: int = 0, epoch: int = 1) -> TraceEvent:
    return TraceEvent(t, event, kind, stage, epoch, round_, peers, size)


def _round_trace() -> list[TraceEvent]:
    """Joining, then one plaintext-style round: RoundStart, two uploads, Aggregate to
    both, two RoundDone, Finished."""
    clients = ("c1", "c2")
    return [
        _event(0.0, "recv", "Hello", "SETUP", ("c1",), 200),
        _event(10.0, "send", "RoundStart", "ROUND", clients, 300, 1),
        _event(10.1, "sent", "RoundStart", "ROUND", clients, 300, 1),
        _event(14.0, "recv", "UpdateUpload", "ROUND", ("c1",), 4_000_000, 1),
        _event(15.0, "recv", "UpdateUpload", "ROUND", ("c2",), 4_000_000, 1),
        _event(16.0, "send", "Aggregate", "ROUND", clients, 4_000_000, 1),
        _event(17.0, "recv", "RoundDone", "ROUND", ("c1",), 100, 1),
        _event(17.5, "recv", "RoundDone", "ROUND", ("c2",), 100, 1),
        _event(18.0, "send", "Finished", "END", clients, 150, 1),
    ]


def test_phases_are_cut_at_the_aggregators_triggers() -> None:
    upload, broadcast = phases_of(_round_trace())
    assert (upload.label, upload.measured_s) == ("round 1 upload", pytest.approx(6.0))
    assert [(hop.kind, len(hop.messages), hop.bytes) for hop in upload.hops] == [
        ("RoundStart", 2, 600), ("UpdateUpload", 2, 8_000_000)]
    assert upload.hops[1].messages[0] == Delivery("c1", AGGREGATOR, 4_000_000)
    assert (broadcast.label, broadcast.measured_s) == ("round 1 broadcast", pytest.approx(2.0))
    assert [(hop.kind, hop.bytes) for hop in broadcast.hops] == [
        ("Aggregate", 8_000_000), ("RoundDone", 200)]


def test_prediction_is_profile_compute_plus_network() -> None:
    phases = phases_of(_round_trace())
    link = Link("shared", 8e6, None, 0.0, efficiency=1.0)
    upload, broadcast = predict(phases, link)
    # upload: RoundStart 600 B (and one 300 B copy's way down), then 8 MB up (8 s)
    # and the last 1 MiB chunk's way down, less the second that c1's upload had
    # before c2 was ready
    chunk_s = MIB * 8 / 8e6
    assert upload.compute_s == pytest.approx(6.0)
    assert upload.network_s == pytest.approx(
        600 * 8 / 8e6 + 300 * 8 / 8e6 + 8.0 + chunk_s - 1.0)
    # broadcast: 8 MB down to both (and a chunk); the RoundDones, half a second apart,
    # do not queue: only the last one's 100 B up and down count
    assert broadcast.seconds == pytest.approx(2.0 + 8.0 + chunk_s + 200 * 8 / 8e6)
    # a profile measured on that same link leaves compute = measured - network, >= 0
    again = predict(phases, link, profile_link=link)
    assert again[0].compute_s == 0.0
    assert again[0].seconds == pytest.approx(upload.network_s)


def test_a_shaped_run_is_compared_phase_by_phase_and_summed() -> None:
    profile = phases_of(_round_trace())
    slower = [replace(phase, measured_s=phase.measured_s * 2) for phase in profile]
    link = Link("shared", 8e6, None, 0.0, efficiency=1.0)
    rows = compare(profile, slower, link)
    assert [row.label for row in rows] == ["round 1 upload", "round 1 broadcast"]
    assert rows[0].measured_s == pytest.approx(12.0)
    assert rows[0].error == pytest.approx(rows[0].predicted_s / 12.0 - 1)
    round_1, session = totals(rows)
    assert (round_1.label, session.label) == ("round 1", "session")
    assert round_1.predicted_s == pytest.approx(sum(row.predicted_s for row in rows))
    assert session.measured_s == pytest.approx(16.0)
    with pytest.raises(ParameterError, match="phases differ from the profile's"):
        compare(profile, slower[:1], link)


def _keys(t: float, epoch: int, round_: int, clients: tuple[str, ...]) -> list[TraceEvent]:
    """One key agreement opened at *t*: KeygenStart to each client, their public shares."""
    return [_event(t, "send", "KeygenStart", "KEYS", (client,), 400, round_, epoch)
            for client in clients] + [
        _event(t + 1.0, "recv", "PublicShare", "KEYS", (client,), 9_000, round_, epoch)
        for client in clients]


def test_each_key_epoch_opens_its_own_phase() -> None:
    # key agreement (epoch 1) restarted at 2 s without c3 (epoch 2, the same round 0),
    # one round, then keys rotated (epoch 3, round 1) before round 2: each key
    # agreement is a phase of its own, though its KeygenStart has a step seen before
    # but for the epoch
    both = ("c1", "c2")
    round_1 = _round_trace()[1:-1]  # RoundStart at 10 s ... RoundDone at 17.5 s
    trace = (_keys(0.0, 1, 0, (*both, "c3")) + _keys(2.0, 2, 0, both)
             + [replace(event, epoch=2) for event in round_1]
             + _keys(18.0, 3, 1, both)
             + [_event(20.0, "send", "RoundStart", "ROUND", both, 300, 2, 3),
                _event(25.0, "send", "Finished", "END", both, 150, 2, 3)])
    phases = phases_of(trace)
    assert [(phase.label, phase.measured_s) for phase in phases] == [
        ("keys", 2.0), ("keys (epoch 2)", 8.0), ("round 1 upload", 6.0),
        ("round 1 broadcast", 2.0), ("keys (epoch 3)", 2.0), ("round 2 upload", 5.0)]
    assert [(hop.kind, len(hop.messages)) for hop in phases[0].hops] == [
        ("KeygenStart", 3), ("PublicShare", 3)]
    assert [(hop.kind, len(hop.messages)) for hop in phases[1].hops] == [
        ("KeygenStart", 2), ("PublicShare", 2)]


def test_a_trace_without_a_complete_phase_is_refused() -> None:
    with pytest.raises(ParameterError, match="no complete phase"):
        phases_of(_round_trace()[:3])


def test_trace_files_are_checked_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    good = _round_trace()[0].as_json()
    path.write_text(good + "\n" + '{"t": 1}\n', encoding="utf-8")
    with pytest.raises(ParameterError, match="line 2: trace line must be an object"):
        read_trace(path)
    path.write_text(good.replace('"epoch": 1, ', "") + "\n", encoding="utf-8")
    with pytest.raises(ParameterError, match=r"line 1: .* lacks the epoch: record it again"):
        read_trace(path)
    path.write_text(good.replace('"recv"', '"lost"') + "\n", encoding="utf-8")
    with pytest.raises(ParameterError, match="line 1: trace event must be one of"):
        read_trace(path)
    with pytest.raises(ParameterError, match="cannot read the trace"):
        read_trace(tmp_path / "missing.jsonl")
    path.write_bytes(good.encode() + b"\n\xff\xfe\n")  # not UTF-8
    with pytest.raises(ParameterError, match=r"cannot read the trace .*'utf-8' codec"):
        read_trace(path)


@pytest.mark.parametrize(("field", "value", "error"), [
    ("t", "NaN", "trace t must be a finite number >= 0, got nan"),
    ("t", "Infinity", "trace t must be a finite number >= 0, got inf"),
    ("t", "-1", "trace t must be a finite number >= 0, got -1"),
    ("round", "1.5", "trace round must be an integer >= 0, got 1.5"),
    ("epoch", "-2", "trace epoch must be an integer >= 0, got -2"),
    ("bytes", "true", "trace bytes must be an integer >= 0, got True"),
])
def test_trace_numbers_are_finite_and_counts_whole(tmp_path: Path, field: str, value: str,
                                                   error: str) -> None:
    path = tmp_path / "trace.jsonl"
    line = _round_trace()[0].as_json()
    start = line.index(f'"{field}": ') + len(f'"{field}": ')
    end = min(i for i in (line.find(",", start), line.find("}", start)) if i >= 0)
    path.write_text(line[:start] + value + line[end:] + "\n", encoding="utf-8")
    with pytest.raises(ParameterError, match=f"line 1: {re.escape(error)}"):
        read_trace(path)


def test_bench_network_predict_names_a_missing_trace(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert network_main(["predict", "--trace", str(tmp_path / "none.jsonl")]) == 1
    assert "cannot read the trace" in capsys.readouterr().err


async def test_a_tracing_link_records_what_it_moves(tmp_path: Path) -> None:
    sender = identity("c1")
    header = Header("session-1", sender.party_id, "server", Stage.SETUP, 0, 0, 0)
    data = encode_message(sender, Message(header, Hello(samples=7, manifest="0" * 64)))
    hub = MemoryHub()
    async with hub.connect("c1") as raw_c1, hub.connect("server") as raw_server:
        c1 = TracingLink(raw_c1, tmp_path / "c1.jsonl")
        server = TracingLink(raw_server, tmp_path / "server.jsonl")
        await c1.send(["server"], data)
        assert await server.receive() == data
        c1.finish()
        server.finish()
    sent = read_trace(tmp_path / "c1.jsonl")
    assert [(e.event, e.kind, e.stage, e.peers, e.bytes) for e in sent] == [
        ("send", "Hello", "SETUP", ("server",), len(data)),
        ("sent", "Hello", "SETUP", ("server",), len(data))]
    (got,) = read_trace(tmp_path / "server.jsonl")
    assert (got.event, got.kind, got.peers, got.bytes) == ("recv", "Hello", ("c1",), len(data))
    assert sent[0].t <= sent[1].t <= got.t


async def test_a_tracing_link_records_the_key_epoch(tmp_path: Path) -> None:
    server = identity("server")
    header = Header("session-1", server.party_id, "c1", Stage.KEYS, 3, 5, 2)
    data = encode_message(server, Message(header, KeygenStart(
        (PartyId("c1"), PartyId("c2")), 2, "0" * 64)))
    assert peek_step(data) == (Stage.KEYS, 5, "KeygenStart", 3)
    hub = MemoryHub()
    async with hub.connect("server") as raw_server, hub.connect("c1") as raw_c1:
        traced = TracingLink(raw_server, tmp_path / "server.jsonl")
        await traced.send(["c1"], data)
        assert await raw_c1.receive() == data
        traced.finish()
    assert [(e.kind, e.stage, e.epoch, e.round) for e in read_trace(tmp_path / "server.jsonl")
            ] == [("KeygenStart", "KEYS", 3, 5)] * 2


async def test_a_tracing_link_records_presence_news_and_the_model_ignores_it(
        tmp_path: Path) -> None:
    hub = MemoryHub()
    async with hub.connect("server") as raw:
        server = TracingLink(raw, tmp_path / "server.jsonl", clock=iter([5.0, 6.5]).__next__)
        server.presence("client-3", False)
        server.presence("client-3", True)
        server.finish()
        server.presence("client-2", False)  # after finish: nothing written, no error
    events = read_trace(tmp_path / "server.jsonl")
    assert [(e.t, e.event, e.kind, e.peers, e.bytes) for e in events] == [
        (5.0, "offline", PRESENCE, ("client-3",), 0), (6.5, "online", PRESENCE, ("client-3",), 0)]
    # the link model reads messages only: presence news in a trace changes no phase
    trace = _round_trace()
    news = [replace(event, t=trace[1].t) for event in events]
    assert phases_of(trace[:1] + news + trace[1:]) == phases_of(trace)
