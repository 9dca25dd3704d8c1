"""A TCP relay in front of a real redis-server that can swallow one reply, the way a half-open
connection does (the request reached the server, the answer never comes back)."""

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


class ReplyDropper:
    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._parts = parts
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._server: asyncio.Server | None = None
        self._drop_after: bytes | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0
        self.url = ""

    def drop_next_reply_to(self, command: bytes) -> None:
        """The next connection that sends `command` never hears back on that connection."""
        self._drop_after = command.upper()

    async def __aenter__(self) -> "ReplyDropper":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = urlunsplit(self._parts._replace(netloc=f"127.0.0.1:{port}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._upstream)
        mute = asyncio.Event()
        up = asyncio.create_task(self._client_to_server(client_r, server_w, mute))
        down = asyncio.create_task(self._server_to_client(server_r, client_w, mute))
        self._tasks.update((up, down))
        with contextlib.suppress(Exception):
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        for writer in (client_w, server_w):
            writer.close()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mute: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            if self._drop_after is not None and self._drop_after in data.upper():
                self._drop_after = None
                self.dropped += 1
                mute.set()
            writer.write(data)
            await writer.drain()

    async def _server_to_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mute: asyncio.Event
    ) -> None:
        while data := await reader.read(65536):
            if not mute.is_set():  # once muted, this connection stays silent, as a dead peer would
                writer.write(data)
                await writer.drain()
