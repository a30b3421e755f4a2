"""Receivers written in Python, each run as its own process by `bench.receivers`.

- ``fast``: answers every request ``204`` and logs its arrival time (the fallback when nginx
  is not installed; `bench` measures its own top rate and prints it beside the figures).
- ``blackhole``: accepts connections, reads whatever comes, and never answers.
- ``big``: answers ``200`` with a body of ``--body-bytes`` (50 MB), to see what a worker
  keeps in memory of a response it should cut at 64 KiB.

Run: ``python -m bench.pyreceiver --mode fast --port 8081 --log arrivals.log``.
The log has one line per request: ``<unix time> <path> <webhook-id> <status>``, the same
format as the nginx receiver's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import IO


class _Http(asyncio.Protocol):
    """A minimal HTTP/1.1 server side: keep-alive, Content-Length bodies only."""

    def __init__(self, mode: str, log: IO[str] | None, body_bytes: int) -> None:
        self.mode = mode
        self.log = log
        self.body_bytes = body_bytes
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.skip = 0
        self.streaming: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.mode == "blackhole":
            return  # read and drop; never answer
        self.buffer += data
        while True:
            if self.skip:
                taken = min(self.skip, len(self.buffer))
                del self.buffer[:taken]
                self.skip -= taken
                if self.skip:
                    return
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            arrived = time.time()
            lines = head.split("\r\n")
            path = lines[0].split(" ")[1] if " " in lines[0] else "-"
            length = 0
            webhook_id = "-"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip())
                elif name == "webhook-id":
                    webhook_id = value.strip()
            self.skip = length
            self._answer(arrived, path, webhook_id)

    def _answer(self, arrived: float, path: str, webhook_id: str) -> None:
        assert self.transport is not None
        if self.mode == "big":
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                + f"content-length: {self.body_bytes}\r\n\r\n".encode()
            )
            self.streaming = asyncio.ensure_future(self._stream_body(self.transport))
            status = 200
        else:
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            status = 204
        if self.log is not None:
            self.log.write(f"{arrived:.6f} {path} {webhook_id} {status}\n")

    async def _stream_body(self, transport: asyncio.Transport) -> None:
        chunk = b"x" * (1 << 20)
        left = self.body_bytes
        with contextlib.suppress(ConnectionError):
            while left > 0 and not transport.is_closing():
                part = chunk[: min(len(chunk), left)]
                transport.write(part)
                left -= len(part)
                # Let the client read: a client that stops at 64 KiB closes, and we stop.
                while transport.get_write_buffer_size() > (4 << 20):
                    if transport.is_closing():
                        return
                    await asyncio.sleep(0.001)


async def _flush(log: IO[str]) -> None:
    while True:
        await asyncio.sleep(0.2)
        log.flush()


async def serve(mode: str, port: int, log_path: str | None, body_bytes: int) -> None:
    log = open(log_path, "a", buffering=1 << 16) if log_path else None  # noqa: SIM115
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Http(mode, log, body_bytes), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    print(f"listening on 127.0.0.1:{port}", flush=True)
    flusher = asyncio.ensure_future(_flush(log)) if log is not None else None
    async with server:
        await server.serve_forever()
    if flusher is not None:
        flusher.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("fast", "blackhole", "big"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log")
    parser.add_argument("--body-bytes", type=int, default=50 * 1024 * 1024)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.mode, args.port, args.log, args.body_bytes))


if __name__ == "__main__":
    main()
