"""A TCP proxy on loopback that a test switches to lose what crosses it: the answers only (the
server acted, the client never hears of it) or everything (the request never arrives). The two
failures a client cannot tell apart, made on the wire between a real client and a real server.

```python
async with TcpProxy("127.0.0.1", temporal_port) as proxy:   # forwards both ways
    ...                                                      # point a client at proxy.address
    proxy.mode = Mode.LOSE_ANSWERS                           # requests go through, answers vanish
```
"""

from __future__ import annotations

import asyncio
import contextlib
from enum import Enum
from typing import Self


class Mode(Enum):
    FORWARD = "forward"
    LOSE_ANSWERS = "lose-answers"
    LOSE_EVERYTHING = "lose-everything"


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = Mode.FORWARD
        self.server: asyncio.Server | None = None
        self.pumps: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        for pump in list(self.pumps):
            pump.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.server.wait_closed()

    async def _connected(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self.writers |= {client_writer, upstream_writer}
        for pump in (
            self._pump(client_reader, upstream_writer, lose={Mode.LOSE_EVERYTHING}),
            self._pump(upstream_reader, client_writer, lose={Mode.LOSE_ANSWERS, Mode.LOSE_EVERYTHING}),
        ):
            task = asyncio.create_task(pump)
            self.pumps.add(task)
            task.add_done_callback(self.pumps.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lose: set[Mode]
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if self.mode in lose:
                    continue  # read and dropped: the sender sees a connection that just went quiet
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
