#!/usr/bin/env python3
"""Opens N logged-in, idle PostgreSQL client connections and holds them.

Usage: idle_clients.py HOST PORT USER DATABASE N [CONCURRENCY]

Each connection sends a StartupMessage (protocol 3.0, sslmode=disable) and
reads until the first ReadyForQuery; only trust logins are supported
(AuthenticationOk). Once all N are logged in it prints "ready N" on stdout
and then holds them, sending nothing, until it is killed.
Used by benches/compare.sh (case idle10k) to measure a pooler's memory.
"""

import asyncio
import struct
import sys


async def login(host, port, user, database):
    reader, writer = await asyncio.open_connection(host, port)
    params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
    writer.write(struct.pack("!ii", 8 + len(params), 196608) + params)
    await writer.drain()
    while True:
        head = await reader.readexactly(5)
        tag, length = head[0:1], struct.unpack("!i", head[1:])[0]
        body = await reader.readexactly(length - 4)
        if tag == b"R" and struct.unpack("!i", body[:4])[0] != 0:
            raise RuntimeError("the server asked for a password (trust logins only)")
        if tag == b"E":
            raise RuntimeError("login failed: " + body.decode(errors="replace"))
        if tag == b"Z":
            return writer


async def main():
    host, port, user, database, n = sys.argv[1:6]
    n = int(n)
    limit = asyncio.Semaphore(int(sys.argv[6]) if len(sys.argv) > 6 else 100)
    failures = []

    async def one():
        async with limit:
            try:
                return await login(host, int(port), user, database)
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(e)
                return None

    writers = await asyncio.gather(*(one() for _ in range(n)))
    ok = sum(w is not None for w in writers)
    if failures:
        print(f"failed {len(failures)}: {failures[0]!r}", file=sys.stderr, flush=True)
    print(f"ready {ok}", flush=True)
    await asyncio.Event().wait()  # hold them until killed


if __name__ == "__main__":
    asyncio.run(main())
