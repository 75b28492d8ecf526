"""The drain baseline: a bare aiomqtt client publishing prepared messages from memory, as the forwarder does.

`python -m bench.baseline PORT FILE`: FILE is a pickle of [(topic, payload), ...]. QoS 1, a window
of `--inflight` messages awaiting PUBACK (a semaphore, as in the forwarder), its own process like the
daemon. Prints `START <wall time>` just before the first publish and `DONE <wall time>` after the
last PUBACK.
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import time

import aiomqtt

from edge_node.broker_connection import BrokerConnection


async def publish_all(port: int, messages: list[tuple[str, bytes]], inflight: int) -> None:
    broker = BrokerConnection.of_tool(f"mqtt://127.0.0.1:{port}", protocol="3.1.1")  # as the daemon's was
    async with aiomqtt.Client(**broker.aiomqtt_options(), identifier="bench-baseline", timeout=30) as client:
        client.pending_calls_threshold = inflight + 20
        window = asyncio.Semaphore(inflight)

        async def send(topic: str, payload: bytes) -> None:
            try:
                await client.publish(topic, payload, qos=1)
            finally:
                window.release()

        print(f"START {time.time():.6f}", flush=True)
        async with asyncio.TaskGroup() as tg:
            for topic, payload in messages:
                await window.acquire()
                tg.create_task(send(topic, payload))
        print(f"DONE {time.time():.6f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("file")
    parser.add_argument("--inflight", type=int, default=20)
    args = parser.parse_args()
    with open(args.file, "rb") as f:
        messages = pickle.load(f)
    asyncio.run(publish_all(args.port, messages, args.inflight))


if __name__ == "__main__":
    main()
