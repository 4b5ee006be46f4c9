"""Run a real Collector that dies (os._exit) right after its first commit, before any ack.

Used by test_crash: the broker must redeliver what was committed but never acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import sys

from collector import Collector, CollectorConfig
from meterhub.settings import MqttSettings


async def main(db_url: str, host: str, port: int, site: str, client_id: str) -> None:
    config = CollectorConfig(
        database_url=db_url, mqtt=MqttSettings(host, port), site=site,
        shared_group=f"g{site}", client_id=client_id, validate_every_s=None,
        batch_max_delay_s=0.3, commission_unknown_meters=True,
    )
    collector = Collector(config)

    def die(_batch: object) -> None:
        sys.stdout.write("committed\n")
        sys.stdout.flush()
        os._exit(17)

    collector.on_commit = die
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    await collector.ready.wait()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
