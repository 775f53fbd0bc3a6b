#!/usr/bin/env bash
# Instructions per transaction, counted by valgrind's callgrind: a
# deterministic measure of pgtarn's CPU cost that does not depend on what
# else the machine is doing (unlike TPS or CPU time).
#
#   benches/instructions.sh PGTARN_BINARY [PGTARN_BINARY ...]
#
# For each binary: starts a throwaway Postgres (trust auth, pgbench scale
# 1), runs the binary under callgrind in front of it (transaction mode,
# pool_size 2), drives `pgbench -S -c 1 -n` with TX_SHORT and then TX_LONG
# transactions in two separate runs, and reports
# (instructions(long) - instructions(short)) / (TX_LONG - TX_SHORT): the
# per-transaction cost with start-up and login cost cancelled out.
# Knobs: TX_SHORT (default 500), TX_LONG (default 3000), PROTOCOL
# (simple, extended or prepared; default simple), CONNECT=1 to count a
# login + transaction instead (`pgbench -C`: a new connection per
# transaction; TX_SHORT and TX_LONG then default to 200 and 1200).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOST=127.0.0.1
CONNECT=${CONNECT:-}
if [ -n "$CONNECT" ]; then
  TX_SHORT=${TX_SHORT:-200}
  TX_LONG=${TX_LONG:-1200}
  CONNECT_FLAG=(-C)
  WHAT="login + transaction"
else
  TX_SHORT=${TX_SHORT:-500}
  TX_LONG=${TX_LONG:-3000}
  CONNECT_FLAG=()
  WHAT="transaction"
fi
PROTOCOL=${PROTOCOL:-simple}
log() { echo "instructions.sh: $*" >&2; }
die() {
  log "$*"
  exit 1
}
cd /
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

[ $# -ge 1 ] || die "usage: $0 PGTARN_BINARY [PGTARN_BINARY ...]"
command -v valgrind >/dev/null || die "valgrind is needed (apt-get install -y valgrind)"
PGBIN=$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -1)")
WORK=$(mktemp -d)
chmod 755 "$WORK"
[ "$(id -u)" -ne 0 ] || chown postgres "$WORK"
PG_PID=""
TARN_PID=""
cleanup() {
  stop_pid "$TARN_PID" pgtarn
  stop_pid "$PG_PID" postgres
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port
PG_PORT=$FREE_PORT
as_pg "$PGBIN/initdb" -D "$WORK/pg" -A trust -U postgres >/dev/null
as_pg "$PGBIN/postgres" -D "$WORK/pg" -p "$PG_PORT" -k "$WORK/pg" -c listen_addresses=$HOST >"$WORK/pg.log" 2>&1 &
PG_PID=$!
for _ in $(seq 100); do
  "$PGBIN/pg_isready" -q -h $HOST -p "$PG_PORT" && break
  sleep 0.1
done
"$PGBIN/pgbench" -q -i -s 1 -h $HOST -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1

# instructions BINARY TX: total instructions callgrind counted in pgtarn
# while pgbench ran TX transactions through it.
instructions() {
  local bin=$1 tx=$2 out="$WORK/cg.out" i
  free_port
  local port=$FREE_PORT
  cat >"$WORK/pgtarn.toml" <<TOML
[pgtarn]
listen_addr = "$HOST:$port"
auth_type = "trust"
workers = 1
[databases.postgres]
host = "$HOST"
port = $PG_PORT
pool_size = 2
[users.postgres]
password = "unused"
TOML
  rm -f "$out"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --config "$WORK/pgtarn.toml" >"$WORK/tarn.log" 2>&1 &
  TARN_PID=$!
  for i in $(seq 600); do
    timeout 1 bash -c "exec 3<>/dev/tcp/$HOST/$port" 2>/dev/null && break
    sleep 0.1
  done
  [ "$i" -lt 600 ] || die "pgtarn did not start under valgrind"
  "$PGBIN/pgbench" -n -S -M "$PROTOCOL" "${CONNECT_FLAG[@]}" -c 1 -t "$tx" -h $HOST -p "$port" -U postgres postgres >"$WORK/pgbench.log" 2>&1 ||
    die "pgbench failed: $(cat "$WORK/pgbench.log")"
  stop_pid "$TARN_PID" pgtarn
  TARN_PID=""
  [ -z "${KEEP_OUT:-}" ] || cp "$out" "$KEEP_OUT.$(basename "$bin").$tx"
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

printf '| binary | protocol | instructions / %s |\n|---|---|---:|\n' "$WHAT"
for bin in "$@"; do
  short=$(instructions "$bin" "$TX_SHORT")
  long=$(instructions "$bin" "$TX_LONG")
  per_tx=$(((long - short) / (TX_LONG - TX_SHORT)))
  printf '| %s | %s | %s |\n' "$bin" "$PROTOCOL" "$per_tx"
done
