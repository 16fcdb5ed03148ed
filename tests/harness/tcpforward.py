"""A TCP forwarder: ``python3 tcpforward.py LISTEN_HOST:PORT TARGET_HOST:PORT``.

Accepts connections on LISTEN and copies bytes both ways to a new
connection to TARGET, half-closes included, until killed. Standard library
only: the harness runs this file directly (inside a network namespace, via
nsenter) to make a service of one namespace answer on 127.0.0.1 of another.
"""

from __future__ import annotations

import asyncio
import functools
import sys

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer``; pass EOF on; on an error drop the connection."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()


async def _handle(target: tuple[str, int], reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError as exc:
        print(f"tcpforward: connect to {target[0]}:{target[1]}: {exc}", flush=True)
        writer.transport.abort()
        return
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        for w in (writer, up_writer):
            w.close()


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


async def _serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    server = await asyncio.start_server(functools.partial(_handle, target), *listen,
                                        reuse_address=True)
    print(f"tcpforward: {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(_serve(_addr(argv[0]), _addr(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
