#!/usr/bin/env python3
"""Real-driver check: asyncpg through pgtarn in transaction pooling mode.

Usage: asyncpg_check.py HOST PORT

Opens CONNECTIONS asyncpg connections (user app, password app-secret,
database app) and runs, on each, ITERATIONS rounds of prepared queries with
asyncpg's default statement cache left on, so the driver uses named
server-side statements (``__asyncpg_stmt_N__``) whose Parse and Bind often
land on different servers. Every result is checked. Exits 0 and prints
``asyncpg: N queries OK`` on success; on the first exception or wrong result
prints what failed (connection, iteration, step, SQLSTATE) and exits 1.

Environment (optional): ASYNCPG_CHECK_CONNECTIONS, ASYNCPG_CHECK_ITERATIONS,
ASYNCPG_CHECK_TIMEOUT (seconds for the whole run), ASYNCPG_CHECK_POOL_SIZE
(pgtarn's pool_size, default 4).
"""

import asyncio
import os
import sys
import time
import traceback

try:
    import asyncpg
except ImportError:
    print("SKIP: asyncpg not installed (pip install asyncpg)")
    sys.exit(2)

CONNECTIONS = int(os.environ.get("ASYNCPG_CHECK_CONNECTIONS", "20"))
ITERATIONS = int(os.environ.get("ASYNCPG_CHECK_ITERATIONS", "200"))
TIMEOUT = float(os.environ.get("ASYNCPG_CHECK_TIMEOUT", "120"))
# pgtarn's pool_size for the database: the fresh-server check holds every
# server but the ones it wants the statement to land on.
POOL_SIZE = int(os.environ.get("ASYNCPG_CHECK_POOL_SIZE", "4"))
# Distinct statement texts cycled through: more than asyncpg's default
# statement cache (100), so evicted statements are closed while others are
# still in use.
DISTINCT_TEXTS = 150


class CheckFailed(Exception):
    pass


def expect(what, got, want):
    if got != want:
        raise CheckFailed(f"{what}: got {got!r}, expected {want!r}")


def describe(exc):
    sqlstate = getattr(exc, "sqlstate", None)
    text = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    if sqlstate:
        text += f" (SQLSTATE {sqlstate})"
    return text


async def connect(host, port):
    return await asyncpg.connect(
        host=host,
        port=port,
        user="app",
        password="app-secret",
        database="app",
        timeout=30,
        command_timeout=30,
    )


async def worker(host, port, cid, table, counter):
    conn = await connect(host, port)
    step = "setup"
    i = -1
    try:
        step = "conn.prepare (explicit, once per connection)"
        minus = await conn.prepare("select $1::int - $2::int")
        counter[0] += 1
        for i in range(ITERATIONS):
            step = "fetchval select $1::int + 1"
            expect(step, await conn.fetchval("select $1::int + 1", i), i + 1)

            step = "fetchrow 2-param statement"
            row = await conn.fetchrow(
                "select $1::int * $2::int as p, 'c' || $2::int as s", i, cid
            )
            expect(step, (row["p"], row["s"]), (i * cid, f"c{cid}"))

            step = "fetch generate_series"
            rows = await conn.fetch(
                "select g, g * $1::int as m from generate_series(1, $2::int) g",
                i,
                5,
            )
            expect(step, [(r["g"], r["m"]) for r in rows], [(g, g * i) for g in range(1, 6)])

            step = "transaction insert + select"
            async with conn.transaction():
                await conn.execute(
                    f"insert into {table} (cid, i, val) values ($1, $2, $3)",
                    cid,
                    i,
                    f"v{cid}-{i}",
                )
                val = await conn.fetchval(
                    f"select val from {table} where cid = $1 and i = $2", cid, i
                )
                expect(step, val, f"v{cid}-{i}")
            counter[0] += 2

            step = "prepared statement (conn.prepare) reused"
            for k in range(3):
                expect(step, await minus.fetchval(i, k), i - k)

            step = "conn.prepare (cache hit) + fetchrow"
            again = await conn.prepare("select $1::int - $2::int")
            expect(step, await again.fetchval(i, 7), i - 7)

            step = "fetchval of a cycling distinct text (statement cache eviction)"
            n = (i * 7 + cid) % DISTINCT_TEXTS
            expect(step, await conn.fetchval(f"select $1::int + {n}", i), i + n)

            counter[0] += 8

        step = "final count"
        got = await conn.fetchval(f"select count(*) from {table} where cid = $1", cid)
        expect(step, got, ITERATIONS)
        counter[0] += 1
    except Exception as exc:
        raise CheckFailed(
            f"connection {cid}, iteration {i}, step '{step}': {describe(exc)}"
        ) from exc
    finally:
        await conn.close()


async def schema_change_check(host, port, table):
    """Two connections cache `select * from TABLE`; one adds a column. With
    Postgres directly each gets `cached plan must not change result type`
    once, which asyncpg recognises (InvalidCachedStatementError, by the
    error's routine field) and retries after re-preparing: both see the new
    column. Through pgtarn only the first gets Postgres' own error; the
    other's statement is refused by pgtarn, which must look the same."""
    a = await connect(host, port)
    b = await connect(host, port)
    step = "schema change: setup"
    try:
        await a.execute(f"create table {table} (x int)")
        await a.execute(f"insert into {table} values (1)")
        query = f"select * from {table}"
        for who, c in (("a", a), ("b", b)):
            step = f"schema change: first fetch on {who}"
            expect(step, [tuple(r) for r in await c.fetch(query)], [(1,)])
        step = "schema change: alter table on a"
        await a.execute(f"alter table {table} add column y int default 2")
        for who, c in (("b", b), ("a", a)):
            step = f"schema change: fetch on {who} after the alter"
            expect(step, [tuple(r) for r in await c.fetch(query)], [(1, 2)])
    except CheckFailed:
        raise
    except Exception as exc:
        raise CheckFailed(f"step '{step}': {describe(exc)}") from exc
    finally:
        await a.execute(f"drop table if exists {table}")
        await a.close()
        await b.close()


async def fresh_server_schema_change_check(host, port, table):
    """A statement asyncpg cached before a column was added on another
    connection, used next on a server that never had it (so no server has
    reported the change): with Postgres directly the statement fails with
    `cached plan must not change result type`, and asyncpg re-prepares and
    retries. pgtarn must fail it the same way, not send rows of the new
    shape under the old description (asyncpg: "the number of columns in the
    result row is different from what was described")."""
    a = await connect(host, port)
    others = [await connect(host, port) for _ in range(POOL_SIZE)]
    step = "fresh server: setup"
    try:
        await a.execute(f"create table {table} (x int)")
        await a.execute(f"insert into {table} values (1)")
        query = f"select * from {table}"
        # a prepares the statement on server X, which its transaction
        # keeps while the other servers are taken.
        step = "fresh server: first fetch, in a transaction"
        in_a = a.transaction()
        await in_a.start()
        expect(step, [tuple(r) for r in await a.fetch(query)], [(1,)])
        held = []
        for c in others[:-1]:
            t = c.transaction()
            await t.start()
            await c.execute("select 1")
            held.append(t)
        await in_a.commit()
        # The last one takes X; the first adds the column, and then the
        # others give back the servers that never had the statement.
        step = "fresh server: holding X"
        on_x = others[-1].transaction()
        await on_x.start()
        await others[-1].execute("select 1")
        step = "fresh server: alter table"
        await others[0].execute(f"alter table {table} add column y int default 2")
        for t in held:
            await t.commit()
        step = "fresh server: fetch after the alter"
        expect(step, [tuple(r) for r in await a.fetch(query)], [(1, 2)])
        await on_x.commit()
    except CheckFailed:
        raise
    except Exception as exc:
        raise CheckFailed(f"step '{step}': {describe(exc)}") from exc
    finally:
        for c in others:
            await c.close()
        await a.execute(f"drop table if exists {table}")
        await a.close()


async def main(host, port):
    table = f"pgtarn_driver_asyncpg_{os.getpid()}"
    admin = await connect(host, port)
    try:
        await admin.execute(f"drop table if exists {table}")
        await admin.execute(
            f"create table {table} (cid int not null, i int not null, val text not null, "
            "primary key (cid, i))"
        )
    finally:
        await admin.close()

    counter = [0]
    start = time.monotonic()
    try:
        tasks = [
            asyncio.create_task(worker(host, port, cid, table, counter))
            for cid in range(1, CONNECTIONS + 1)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
    finally:
        try:
            admin = await connect(host, port)
            try:
                await admin.execute(f"drop table if exists {table}")
            finally:
                await admin.close()
        except Exception as exc:  # cleanup only; the check's result stands
            print(f"asyncpg: warning: could not drop {table}: {describe(exc)}", file=sys.stderr)
    await schema_change_check(host, port, f"{table}_ddl")
    await fresh_server_schema_change_check(host, port, f"{table}_fresh")
    elapsed = time.monotonic() - start
    print(
        f"asyncpg: {counter[0]} queries OK "
        f"({CONNECTIONS} connections x {ITERATIONS} iterations, {elapsed:.1f}s, "
        f"asyncpg {asyncpg.__version__})"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: asyncpg_check.py HOST PORT", file=sys.stderr)
        sys.exit(64)
    try:
        asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    except asyncio.TimeoutError:
        print(f"asyncpg: FAILED: timed out after {TIMEOUT:.0f}s", file=sys.stderr)
        sys.exit(1)
    except CheckFailed as exc:
        print(f"asyncpg: FAILED: {exc}", file=sys.stderr)
        if exc.__cause__ is not None and not isinstance(exc.__cause__, CheckFailed):
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        sys.exit(1)
    except Exception as exc:
        print(f"asyncpg: FAILED: {describe(exc)}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        sys.exit(1)
