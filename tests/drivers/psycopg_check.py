#!/usr/bin/env python3
"""psycopg 3 (libpq) through pgtarn: SCRAM over plain TCP and over TLS with
channel binding (SCRAM-SHA-256-PLUS), a wrong password, and psycopg's
automatic server-side prepared statements from concurrent connections in
transaction pooling mode.

Usage: psycopg_check.py HOST PORT CA_FILE
"""
import sys
import threading

import psycopg

HOST, PORT, CA = sys.argv[1], sys.argv[2], sys.argv[3]
BASE = f"host={HOST} port={PORT} user=app password=app-secret dbname=app"


def check(cond, what):
    if not cond:
        raise SystemExit(f"psycopg check failed: {what}")


def plain_and_tls():
    with psycopg.connect(BASE + " sslmode=disable") as c:
        check(c.execute("select 40 + 2").fetchone()[0] == 42, "plain SCRAM query")
    tls = f" host=localhost sslmode=verify-full sslrootcert={CA}"
    for binding in ("require", "disable"):
        with psycopg.connect(BASE + tls + f" channel_binding={binding}") as c:
            check(c.info.pgconn.ssl_in_use, f"TLS in use (channel_binding={binding})")
            check(c.execute("select 1").fetchone()[0] == 1, f"TLS query (channel_binding={binding})")
    try:
        psycopg.connect(BASE.replace("app-secret", "wrong") + " sslmode=disable")
        check(False, "wrong password refused")
    except psycopg.OperationalError as e:
        check("password authentication failed" in str(e), f"28P01 text, got {e}")


def prepared(worker, errors):
    try:
        with psycopg.connect(BASE + " sslmode=disable", autocommit=True) as c:
            c.prepare_threshold = 1
            for i in range(200):
                got = c.execute("select %s::int + %s::int", (i, worker)).fetchone()[0]
                check(got == i + worker, f"worker {worker}: {got} != {i + worker}")
                got = c.execute("select %s::text || 'x'", (str(i),)).fetchone()[0]
                check(got == f"{i}x", f"worker {worker}: text result {got}")
    except BaseException as e:  # noqa: BLE001 - reported below
        errors.append(f"worker {worker}: {e!r}")


def main():
    plain_and_tls()
    errors = []
    threads = [threading.Thread(target=prepared, args=(w, errors)) for w in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check(not errors, "; ".join(errors))
    print("psycopg: SCRAM plain/TLS/-PLUS OK, 4000 prepared queries OK")


main()
