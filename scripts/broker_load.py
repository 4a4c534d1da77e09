"""All-to-all burst through a private broker: what the broker pays per party.

N MqttTransports in this one process (each its own connection, identity and client
id) connect to a private broker; each sends one small message to every other, as key
agreement's sealed deliveries do (N(N-1) transfers, each a manifest and one chunk,
each frame acked).  Prints the wall time, the broker's CPU seconds, its open file
descriptors with everyone connected and its peak resident memory.

    python scripts/broker_load.py --broker mosquitto --parties 10 50 100
    python scripts/broker_load.py --broker amqtt --parties 10 50 100

One process plays every party, so its event loop, not the broker, is the slow side.
By default each party has room for four frames per peer (``frame_queue_limit`` 4 N)
and a 60 s ack timeout, which keeps the process's own drops and retransmissions from
inflating the broker's work; ``--frame-queue-limit 256 --ack-timeout 5`` runs with the
transport's defaults instead.  ``client_drops`` counts frames aiomqtt discarded because
a party's queue was full ("Message queue is full. Discarding message.").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path

from threshold_fl.identity import Identity
from transports.broker import AmqttBroker, BrokerProcess, MosquittoBroker
from transports.mqtt import MqttOptions, MqttTransport

PAYLOAD = 1024


def _proc(pid: int) -> tuple[float, int, int]:
    """CPU seconds, open descriptors and peak RSS (KiB) of process *pid*."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text()
               .splitlines() if line.startswith("VmHWM:"))
    return cpu, fds, hwm


class _Drops(logging.Handler):
    """Counts aiomqtt's 'Message queue is full' warnings (and keeps them off stderr)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "queue is full" in record.getMessage()


async def burst(broker: BrokerProcess, n: int, frame_queue_limit: int | None,
                ack_timeout_s: float) -> dict[str, float]:
    names = [f"p{i:03d}" for i in range(n)]
    ids = {p: Identity.from_seed(p, hashlib.sha256(p.encode()).digest()) for p in names}

    def verify(sender: str, data: bytes, signature: bytes) -> bool:
        try:
            ids[sender].public.verify(data, signature)
        except Exception:
            return False
        return True

    options = MqttOptions(keepalive=30, operation_timeout_s=60, give_up_after=120,
                          ack_timeout_s=ack_timeout_s,
                          frame_queue_limit=frame_queue_limit or 4 * n)
    drops = _Drops()
    logging.getLogger().addHandler(drops)
    parties = [MqttTransport(p, "load", broker.url, sign=ids[p].sign, verify=verify,
                             options=options) for p in names]
    assert broker.pid is not None
    await asyncio.gather(*(t.connect() for t in parties))
    cpu0, fds, _ = _proc(broker.pid)
    start = time.monotonic()

    async def run(t: MqttTransport) -> None:
        others = [p for p in names if p != t.party_id]
        await t.send(others, os.urandom(PAYLOAD))
        for _ in others:
            await asyncio.wait_for(t.receive(), 300)

    await asyncio.gather(*(run(t) for t in parties))
    wall = time.monotonic() - start
    cpu1, _, hwm = _proc(broker.pid)
    retransmits = sum(t.stats.retransmits for t in parties)
    await asyncio.gather(*(t.close() for t in parties))
    logging.getLogger().removeHandler(drops)
    return {"wall_s": wall, "broker_cpu_s": cpu1 - cpu0, "broker_fds": fds,
            "broker_peak_rss_mib": hwm / 1024, "retransmits": retransmits,
            "client_drops": drops.count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("mosquitto", "amqtt"), default="mosquitto")
    parser.add_argument("--parties", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--frame-queue-limit", type=int, default=None,
                        help="MqttOptions.frame_queue_limit of every party (default 4 N)")
    parser.add_argument("--ack-timeout", type=float, default=60.0,
                        help="MqttOptions.ack_timeout_s of every party (default 60)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # warnings reach _Drops; stderr: errors
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.ERROR)
    print("| broker | N | transfers | wall s | broker CPU s | broker fds | broker peak MiB "
          "| retransmits | client drops |\n|---|---|---|---|---|---|---|---|---|")
    for n in args.parties:
        with (MosquittoBroker() if args.broker == "mosquitto" else AmqttBroker()) as broker:
            r = asyncio.run(burst(broker, n, args.frame_queue_limit, args.ack_timeout))
        print(f"| {args.broker} | {n} | {n * (n - 1)} | {r['wall_s']:.1f} | "
              f"{r['broker_cpu_s']:.2f} | {r['broker_fds']} | {r['broker_peak_rss_mib']:.1f} "
              f"| {r['retransmits']} | {r['client_drops']} |", flush=True)


if __name__ == "__main__":
    main()
