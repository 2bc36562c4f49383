"""The embedded fallback broker (amqtt, pure Python) as a process of its own.

For machines without a Mosquitto binary: MQTT 3.1.1 only, several times slower than
Mosquitto, fine for small models. Run: ``python -m fogfl.embedded_broker --port P``.

Persistence is best-effort at most: everything lives in memory, so a restart loses
retained messages and sessions, and amqtt 0.11 answers "session present" to a returning
persistent client without delivering what was published while it was away (measured).
Publishes still wait through an outage and sessions subscribe again after it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import warnings


class _ProbesAreNotErrors(logging.Filter):
    """amqtt 0.11 logs an ERROR for every connection closed before its CONNECT; that is what
    a readiness or health check does (open the port, close it), on every healthy start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No data from ")


async def serve(host: str, port: int) -> None:
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}", "max_connections": 0}},
        "sys_interval": 0,
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }
    broker = Broker(config)
    await broker.start()
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # amqtt 0.11 warns about its own legacy config keys on every start; they are not ours.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("amqtt.broker").addFilter(_ProbesAreNotErrors())
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
