"""``threshold-fl bench large``: one threshold round with a BERT-size update over MQTT.

A private mosquitto, the aggregator and N clients (default 2) as separate OS processes,
real OpenFHE and the real MQTT transport: each client uploads a synthetic update of
``--length`` values (default BERT-base's 109,482,240), encrypted whole
(``--fraction 1``: the mask is all ones, so there is no mask agreement) or selectively
(``--fraction 0.1``: the top 10 % by sensitivity, after the protocol's mask agreement,
which encrypts every client's full-length sensitivity map).  Uploads larger than
``--part-mib`` stream as several signed messages, which the aggregator adds into its
running sum as they arrive; so does the joint decryption (the aggregate's c1 to each
member, each member's shares, the fused result to every client), part by part.

The synthetic vectors are closed-form functions of the index (a sine per client), so
every client checks its decrypted global model against the exact weighted average
without holding the others' vectors.

Per party it prints: peak resident memory (VmHWM), payload bytes sent and received
(MqttStats), seconds of compute per kind of work (SessionSummary.compute_s), and when
keys, mask and round completed, counted from the party's start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from threshold_fl._checks import bounded
from threshold_fl.arrays import FloatArray
from threshold_fl.bench.output import peak_mib, status_mib
from threshold_fl.bench.processes import stop
from threshold_fl.errors import ParameterError, ThresholdFLError

__all__ = ["main", "synthetic_update"]

BERT_VALUES = 109_482_240
_RESULT = "RESULT "
_STEP = 1 << 22  # values generated and checked at a time


def synthetic_update(index: int, start: int, stop: int) -> FloatArray:
    """Values start to stop - 1 of client ``index``'s update: within (-0.9, 0.9)."""
    # in place, the same operations in the same order: one array (0.9 GB at BERT size),
    # where the expression made three at a time
    values: FloatArray = np.arange(start, stop, dtype=np.float64)
    values *= 1e-3 * (index + 1)
    values += index
    np.sin(values, out=values)
    values *= 0.9
    return values


def _sensitivity(index: int, length: int) -> FloatArray:
    values: FloatArray = np.arange(length, dtype=np.float64)
    values *= 7e-4
    values += index
    np.cos(values, out=values)
    np.abs(values, out=values)
    return values


# ----------------------------------------------------------------- one party (a process)


def _max_error(model: FloatArray, weights: Sequence[float], mask: Any) -> float:
    """Largest |decrypted - exact weighted average| of the model."""
    worst = 0.0
    for start in range(0, model.size, _STEP):
        stop = min(model.size, start + _STEP)
        expected = sum(w * synthetic_update(i, start, stop) for i, w in enumerate(weights))
        worst = max(worst, float(np.abs(model[start:stop] - expected).max()))
    return worst


async def _run_party(folder: Path, name: str, broker_url: str, part_bytes: int,
                     max_payload: int) -> dict[str, Any]:
    from protocols import Manifest
    from threshold_fl.app.party import mqtt_transport
    from threshold_fl.identity import Identity
    from threshold_fl.node import Aggregator, FederatedClient
    from transports.broker import BrokerConfig
    from transports.chunks import ReassemblyLimits
    from transports.mqtt import MqttOptions

    manifest = Manifest.load(folder / "manifest.json")
    identity = Identity.from_seed(name, (folder / f"{name}.seed").read_bytes())
    limits = ReassemblyLimits(max_payload=max_payload, max_buffered=2 * max_payload)
    options = MqttOptions(keepalive=30, ack_timeout_s=20.0, give_up_after=600.0,
                          operation_timeout_s=120.0, limits=limits)
    transport = mqtt_transport(manifest, identity, BrokerConfig.from_url(broker_url), options)
    started = time.monotonic()
    marks: dict[str, float] = {}

    def mark(event: object) -> None:
        marks.setdefault(type(event).__name__, round(time.monotonic() - started, 1))

    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:7.1f} s, {status_mib('VmRSS') or 0:,.0f} MiB, "
              f"peak {peak_mib():,.0f}] {line}", flush=True)

    out: dict[str, Any] = {"party": name}
    async with transport:
        if name == manifest.aggregator.party_id:
            summary = await Aggregator(manifest, identity, transport, on_event=mark,
                                       progress=say, part_bytes=part_bytes).run()
        else:
            index = manifest.client_ids.index(name)
            samples = index + 1
            total = sum(range(1, len(manifest.client_ids) + 1))
            node = FederatedClient(
                manifest, identity, transport, samples=samples, part_bytes=part_bytes,
                train=lambda round_, model: synthetic_update(index, 0, manifest.model_length),
                sensitivity=lambda: _sensitivity(index, manifest.model_length),
                on_event=mark, progress=say)
            async with node:
                async for result in node.rounds():
                    weights = [(i + 1) / total for i in range(len(manifest.client_ids))]
                    out["max_error"] = _max_error(result.model, weights, node.mask)
                    out["encrypted"] = node.mask.count if node.mask is not None else 0
                    out["bound"] = node.machine.context.error_bound(len(weights)) + 1e-7
            summary = node.summary
        stats = transport.stats
    out.update(
        peak_mib=round(peak_mib()), seconds=round(time.monotonic() - started, 1),
        marks=marks, compute_s={k: round(v, 1) for k, v in summary.compute_s.items()},
        bytes_sent=stats.bytes_sent, bytes_received=stats.bytes_received,
        messages_sent=stats.messages_sent, messages_received=stats.messages_received,
        retransmits=stats.retransmits, finished=summary.finished, aborted=summary.aborted,
        dropped=summary.dropped)
    return out


# ----------------------------------------------------------------- the federation


def _prepare(folder: Path, args: argparse.Namespace) -> list[str]:
    from protocols import MaskPolicy, Mode, Timeouts, make_manifest
    from threshold_fl.identity import Identity

    names = ["aggregator", *(f"client{i}" for i in range(1, args.clients + 1))]
    identities = {}
    for name in names:
        seed = os.urandom(32)
        (folder / f"{name}.seed").write_bytes(seed)
        identities[name] = Identity.from_seed(name, seed)
    long = float(args.timeout)
    manifest = make_manifest(
        session="bench-large", aggregator=identities["aggregator"].public,
        clients=[identities[n].public for n in names[1:]], model_length=args.length,
        mode=Mode.THRESHOLD, rounds=1,
        mask=MaskPolicy(fraction=args.fraction, first_and_last=False),
        timeouts=Timeouts(join_s=120, keys_s=600, upload_s=long, decrypt_s=long))
    manifest.save(folder / "manifest.json")
    return names


def _spawn(folder: Path, name: str, url: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "threshold_fl.bench.large", "--party", name,
               "--folder", str(folder), "--broker", url, "--part-mib", str(args.part_mib),
               "--max-payload-mib", str(args.max_payload_mib)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)


def _collect(processes: dict[str, subprocess.Popen[str]], deadline: float) -> list[dict[str, Any]]:
    """Echo the parties' progress lines and gather their results."""
    import selectors

    results: list[dict[str, Any]] = []
    selector = selectors.DefaultSelector()
    for name, process in processes.items():
        assert process.stdout is not None
        selector.register(process.stdout, selectors.EVENT_READ, name)
    open_streams = len(processes)
    while open_streams and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=min(5.0, max(0.0, deadline - time.monotonic()))):
            line = key.fileobj.readline()  # type: ignore[union-attr]
            if not line:
                selector.unregister(key.fileobj)
                open_streams -= 1
            elif line.startswith(_RESULT):
                results.append(json.loads(line[len(_RESULT):]))
            else:
                print(f"{key.data}: {line.rstrip()}", flush=True)
    selector.close()
    return results


def _exit_codes(processes: dict[str, subprocess.Popen[str]], grace_s: float
                ) -> dict[str, int | None]:
    """Each party's exit status, once it exits within *grace_s* (its output ended, it
    should be on its way out); None for one that does not, which is then stopped."""
    codes: dict[str, int | None] = {}
    ends = time.monotonic() + grace_s
    for name, process in processes.items():
        try:
            codes[name] = process.wait(max(0.0, ends - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[name] = None
            stop(process)
    return codes


def _report(results: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    lines = [f"# BERT-size round over MQTT: {args.length:,} values, {args.clients} clients, "
             f"{args.fraction:.0%} encrypted, parts of at most {args.part_mib} MiB, max_payload "
             f"{args.max_payload_mib} MiB", "",
             "| party | peak MiB | sent MB | received MB | messages sent | compute s "
             "| keys s | mask s | round s | max error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: str(r["party"])):
        marks = r["marks"]
        error = r.get("max_error")
        lines.append(
            f"| {r['party']} | {r['peak_mib']:,} | {r['bytes_sent'] / 1e6:,.1f} | "
            f"{r['bytes_received'] / 1e6:,.1f} | {r['messages_sent']} | "
            + ", ".join(f"{k} {v}" for k, v in sorted(r["compute_s"].items()))
            + f" | {marks.get('KeyAgreed', '-')} | {marks.get('MaskAgreed', '-')} | "
            f"{marks.get('RoundCompleted', '-')} | "
            + ("-" if error is None else f"{error:.1e} (bound {r['bound']:.1e})") + " |")
    lines += ["", f"Whole run (processes started to all exited): {seconds:.0f} s."]
    return "\n".join(lines)


def _federate(args: argparse.Namespace) -> int:
    from protocols import MaskPolicy
    from transports.broker import MosquittoBroker

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tfl-large-") as tmp, MosquittoBroker() as broker:
        folder = Path(tmp)
        names = _prepare(folder, args)
        encrypted = round(args.length * args.fraction)
        upload = 16 * encrypted + 4 * (args.length - encrypted)
        mask_stage = ("no mask stage (fraction 1)" if MaskPolicy(args.fraction).everything
                      else f"the mask stage's {16 * args.length / 1e9:.2f} GB (all encrypted)")
        print(f"{args.length:,} values, {args.fraction:.0%} encrypted, {args.clients} "
              f"clients, broker {broker.url}; estimate: a round's upload about "
              f"{upload / 1e9:.2f} GB per client (16 B per encrypted value, 4 per plain one), "
              f"{mask_stage}", flush=True)
        processes: dict[str, subprocess.Popen[str]] = {}
        try:  # every party stopped and reaped before the folder and broker go
            for name in names:
                processes[name] = _spawn(folder, name, broker.url, args)
            deadline = started + args.timeout * 3
            results = _collect(processes, deadline)
            late = time.monotonic() >= deadline
            if late:
                print(f"the parties did not finish within {args.timeout * 3} s (3 x --timeout); "
                      "stopping them", file=sys.stderr, flush=True)
            codes = _exit_codes(processes, 0.0 if late else 60.0)
        finally:
            for process in processes.values():
                stop(process)
    seconds = time.monotonic() - started
    report = _report(results, args, seconds)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"large-{args.length}-{round(args.fraction * 100)}"
    (args.out / f"{stem}.md").write_text(report + "\n", encoding="utf-8")
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    failed = [n for n, code in codes.items() if code != 0]
    bad = [r["party"] for r in results if not r["finished"]]
    if failed or bad or len(results) != len(names):
        hung = [n for n, code in codes.items() if code is None]
        print(f"FAILED: exit codes {codes}; not finished: {bad}"
              + (f"; still running at the deadline, stopped: {hung}" if hung else ""),
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="threshold-fl bench large", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=bounded(int, 1, 250_000_000), default=BERT_VALUES)
    parser.add_argument("--clients", type=bounded(int, 2, 10), default=2)
    parser.add_argument("--fraction", type=bounded(float, 0.0, 1.0), default=1.0,
                        help="share of the values encrypted (1: all; 0.1: top 10 %%)")
    parser.add_argument("--part-mib", type=bounded(int, 1, 1000), default=256,
                        help="most MiB of one upload or decryption message, all its bytes "
                        "counted; at most --max-payload-mib (default 256)")
    parser.add_argument("--max-payload-mib", type=bounded(int, 1, 4096), default=1024,
                        help="the transports' max_payload in MiB (default 1024, the "
                        "library's): no single message may exceed it")
    parser.add_argument("--timeout", type=bounded(int, 60, 36_000), default=3600,
                        help="upload and decryption stage timeout, seconds")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--party", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    from protocols.protection import check_part_bytes
    try:
        check_part_bytes(args.part_mib << 20, args.max_payload_mib << 20)
    except ParameterError as exc:
        parser.error(f"--part-mib {args.part_mib} over --max-payload-mib "
                     f"{args.max_payload_mib}: {exc}")
    try:
        if args.party is not None:  # one party, in its own process
            result = asyncio.run(_run_party(args.folder, args.party, args.broker,
                                            args.part_mib << 20, args.max_payload_mib << 20))
            print(_RESULT + json.dumps(result), flush=True)
            return 0 if result["finished"] else 1
        return _federate(args)
    except ThresholdFLError as exc:
        print(f"threshold-fl bench large: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
