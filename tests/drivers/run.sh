#!/usr/bin/env bash
# Runs the real-driver checks against a pgtarn listening on HOST:PORT (user
# app / password app-secret / database app, transaction pooling mode).
#
#   tests/drivers/run.sh HOST PORT [asyncpg|jdbc|all]
#
# A driver that is not installed is skipped with a "SKIP:" line; the exit
# status is non-zero if any check that ran failed.
set -uo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 HOST PORT [asyncpg|jdbc|all]" >&2
  exit 64
fi
host=$1 port=$2 which=${3:-all}
dir=$(cd "$(dirname "$0")" && pwd)
jar=${PGJDBC_JAR:-/usr/share/java/postgresql.jar}
failed=0

if [ "$which" = all ] || [ "$which" = asyncpg ]; then
  if python3 -c 'import asyncpg' 2>/dev/null; then
    python3 "$dir/asyncpg_check.py" "$host" "$port" || failed=1
  else
    echo "SKIP: asyncpg not installed (pip install asyncpg)"
  fi
fi

if [ "$which" = all ] || [ "$which" = jdbc ]; then
  if java -version >/dev/null 2>&1 && javac -version >/dev/null 2>&1 && [ -f "$jar" ]; then
    classes=$(mktemp -d)
    trap 'rm -rf "$classes"' EXIT
    if javac -nowarn -cp "$jar" -d "$classes" "$dir/JdbcCheck.java"; then
      java -cp "$jar:$classes" JdbcCheck "$host" "$port" || failed=1
    else
      echo "jdbc: FAILED: JdbcCheck.java did not compile" >&2
      failed=1
    fi
  else
    echo "SKIP: no java or pgjdbc jar (apt-get install libpostgresql-jdbc-java default-jdk-headless)"
  fi
fi

exit $failed
