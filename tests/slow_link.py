"""A loopback TCP relay that delays every byte by half a round trip each way, so a test against moto's server
pays what a bucket tens of milliseconds away costs: a change that adds serial round trips shows up in the suite.

Run as its own process (`python tests/slow_link.py UPSTREAM_PORT RTT_MS`; it prints the port it listens on), so
its event loop never waits on the test's GIL. The same idea as ../shared/tools/latency_proxy.py, kept here so the
tests need nothing outside the repository.
"""

from __future__ import annotations

import asyncio
import sys
import time


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    queue: asyncio.Queue = asyncio.Queue()

    async def receive() -> None:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay_s, data))
        queue.put_nowait((time.monotonic() + delay_s, b""))

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)  # pure delay: a big body is not slowed more than a small one
            if not data:
                break
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(receive(), deliver())
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(upstream_port: int, rtt_ms: float) -> None:
    one_way = rtt_ms / 2000.0

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_relay(client_r, server_w, one_way), _relay(server_r, client_w, one_way))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2])))
