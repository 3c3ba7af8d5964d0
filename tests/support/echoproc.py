"""A plain TCP echo server in its own process (``python echoproc.py``): prints its port.

The cluster tests run their load generator in the test process; an endpoint
there would share its interpreter lock and slow down with it.
"""

from __future__ import annotations

import asyncio
import sys


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        if not self.transport.is_closing():
            self.transport.write_eof()
        return True

    def pause_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes


if __name__ == "__main__":
    # The default loop: uvloop aborted (SIGABRT) here under a reset storm.
    asyncio.run(main())
