#!/usr/bin/env bash
# benches/soak.sh: a bounded soak of pgtarn under load while its upstream
# PostgreSQL restarts and its configuration is reloaded (issue 6). It is not
# part of `cargo test`; run it by hand or from a nightly job.
#
# What it does:
#   1. builds pgtarn (`cargo build --release`), starts a throwaway PostgreSQL
#      (initdb into a temp dir as the `postgres` OS user when run as root,
#      random loopback port, SCRAM auth), runs `pgbench -i -s SCALE` directly,
#      and starts pgtarn (RUST_LOG=info, log to a file) in transaction mode
#      with metrics_addr, admin_users = ["app"], server_check_delay = "1s" and
#      query_wait_timeout = "10s";
#   2. warms up with WARMUP seconds of pgbench through pgtarn, then samples
#      pgtarn's RSS (VmRSS) and open fds with no client connected;
#   3. for DURATION seconds runs pgbench through pgtarn (-c CLIENTS -j JOBS,
#      WORKLOAD, -n) in consecutive ROUND-second rounds: pgbench aborts a
#      client on any error (e.g. its transaction's server died), so a round
#      that meets an upstream restart reports its failures and the next round
#      starts afresh with all clients. Meanwhile
#        - every RESTART_EVERY s PostgreSQL is restarted: `pg_ctl restart -m
#          fast`, except the 2nd restart, which is a crash: `kill -9` of the
#          postmaster (as the postgres user), wait for its backends to exit,
#          `pg_ctl start`. After each restart the time until a `SELECT 1`
#          through pgtarn succeeds again is measured;
#        - every RELOAD_EVERY s pgtarn's config file is rewritten (pool_size
#          alternating POOL_SIZE+5 and POOL_SIZE) and pgtarn reloads it: by
#          SIGHUP, except the 2nd reload, which is `RELOAD` in the admin
#          console (psql -U app pgtarn); the pool_size pgtarn then reports
#          (pgtarn_pool_max_size) is recorded;
#        - pgtarn's RSS and fd count are sampled every 10 s;
#   4. after the load: samples RSS/fds again (no client connected), restarts
#      PostgreSQL once more (fast, idle pool), then checks that pgtarn is
#      still running and that a `SELECT 1` through it succeeds at the first
#      attempt, followed by POOL_SIZE concurrent ones (each idle server
#      connection in the pool is then handed out: none may be dead);
#   5. prints a Markdown report: a summary table, one row per round, the
#      restarts and reloads, and problems found. Everything it started
#      (PostgreSQL, pgtarn, pgbench, psql) is stopped by PID on exit, also
#      on Ctrl-C or TERM, and the temp dir is removed.
#
# Usage:
#   benches/soak.sh                                   # 180 s, defaults below
#   DURATION=40 RESTART_EVERY=15 RELOAD_EVERY=10 benches/soak.sh
#   DURATION=600 CLIENTS=100 OUT=/tmp/soak.md benches/soak.sh
#
# Environment knobs (defaults in brackets):
#   DURATION       seconds of load (sum of the rounds)                  [180]
#   CLIENTS        pgbench clients (-c)                                 [40]
#   RESTART_EVERY  seconds between upstream restarts; 0 = none          [45]
#   RELOAD_EVERY   seconds between config reloads; 0 = none             [20]
#   POOL_SIZE      pool_size at start; reloads alternate +5 and back    [10]
#   ROUND          seconds per pgbench round (-T)                       [10]
#   WARMUP         seconds of pgbench before the start sample           [10]
#   WORKLOAD       pgbench script options  ["-b tpcb-like@1 -b select-only@1"]
#   JOBS           pgbench threads (-j)                                 [2]
#   SCALE          pgbench -i scale factor                              [5]
#   OUT            also write the report to this file                   [unset]
#   PGTARN_BIN     use this pgtarn binary instead of cargo build --release
#   PG_BINDIR      PostgreSQL server binaries [newest /usr/lib/postgresql/*/bin]
#   BUILD_TIMEOUT  seconds allowed for cargo build                      [1800]
#   KEEP_TMP=1     keep the temp dir (logs, configs, round outputs)
#
# Reading the result:
#   - "committed transactions" is the sum over rounds of pgbench's
#     "number of transactions actually processed". Rounds that overlap a
#     restart are expected to lose clients ("aborted clients": their
#     transaction's server went away, pgtarn answered with an error and
#     pgbench gave up on that client) or, if the restart hit the round's
#     start, to fail to connect at all. A round with failures that does NOT
#     overlap a restart is listed under "Problems": that points at pgtarn
#     handing out dead connections, or at a reload disturbing clients.
#   - "pgtarn answered SELECT 1 again after" is, per restart, the seconds
#     from PostgreSQL being back (pg_ctl returned) to the first successful
#     `SELECT 1` through pgtarn; it should be about 0.
#   - RSS and fds at start and end are both taken with no client connected;
#     they should be close. The RSS line also gives min/max of the 10 s
#     samples taken under load.
#   - Server connections closed, by reason, and client errors, by SQLSTATE
#     class, come from pgtarn's /metrics: class 57 (admin shutdown) and 08
#     (connection failure) are the restarts; anything else deserves a look.
#   - The last row must say pgtarn was up and the final SELECT 1 succeeded.
# Exit status: 0 when no problem was found, 1 otherwise (or on setup errors).
#
# Needs: bash 4+ (5 for EPOCHREALTIME), pgbench, psql, curl, coreutils
# timeout, pgrep, PostgreSQL server binaries; as root, the `postgres` user.
# Progress goes to stderr, the report to stdout.

set -euo pipefail

KNOBS=(DURATION CLIENTS RESTART_EVERY RELOAD_EVERY POOL_SIZE ROUND WARMUP WORKLOAD JOBS SCALE
  OUT PGTARN_BIN PG_BINDIR BUILD_TIMEOUT KEEP_TMP)
COMMAND=""
for knob in "${KNOBS[@]}"; do
  if [ -n "${!knob+x}" ]; then COMMAND+="$knob=$(printf '%q' "${!knob}") "; fi
done
COMMAND+="$(printf '%q' "$0")"

DURATION=${DURATION:-180}
CLIENTS=${CLIENTS:-40}
RESTART_EVERY=${RESTART_EVERY:-45}
RELOAD_EVERY=${RELOAD_EVERY:-20}
POOL_SIZE=${POOL_SIZE:-10}
ROUND=${ROUND:-10}
WARMUP=${WARMUP:-10}
WORKLOAD=${WORKLOAD:--b tpcb-like@1 -b select-only@1}
JOBS=${JOBS:-2}
SCALE=${SCALE:-5}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
KEEP_TMP=${KEEP_TMP:-0}
SAMPLE_EVERY=10

APP_USER=app
APP_PASSWORD=app-secret
APP_DB=app
HOST=127.0.0.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${OUT:-}" ] && [[ $OUT != /* ]]; then OUT="$PWD/$OUT"; fi
cd / # commands run as the postgres user must never lack a cwd
export PGSSLMODE=disable PGGSSENCMODE=disable PGCONNECT_TIMEOUT=5
START_DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
START_EPOCH=$EPOCHREALTIME

log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
# shellcheck source=benches/lib.sh disable=SC1091 # followed with shellcheck -x
. "$ROOT/benches/lib.sh"

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for knob in DURATION CLIENTS POOL_SIZE ROUND JOBS SCALE BUILD_TIMEOUT; do
  if ! is_uint "${!knob}" || [ "${!knob}" -eq 0 ]; then die "$knob must be a positive integer (got '${!knob}')"; fi
done
for knob in RESTART_EVERY RELOAD_EVERY WARMUP; do
  is_uint "${!knob}" || die "$knob must be a non-negative integer (got '${!knob}')"
done
read -r -a WORKLOAD_ARGS <<<"$WORKLOAD"
for tool in pgbench psql curl timeout pgrep; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH"
done
[ -n "${EPOCHREALTIME:-}" ] || die "bash 5 or later is needed (EPOCHREALTIME)"

# ---------------------------------------------------------------- processes --

TMP=""
PG_DATA=""
PG_BIN=""
PG_STARTED=0
PG_PM_PID=""
PGT_PID=""
LOAD_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_pid "$LOAD_PID" "pgbench rounds"
  stop_pid "$CHILD_PID" "child"
  stop_pid "$PGT_PID" "pgtarn"
  if [ "$PG_STARTED" = 1 ] && [ -n "$PG_DATA" ]; then
    local pm="" i
    [ -f "$PG_DATA/postmaster.pid" ] && pm=$(head -1 "$PG_DATA/postmaster.pid")
    [ -n "$pm" ] || pm=$PG_PM_PID
    as_pg timeout 60 "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 30 >/dev/null 2>&1
    for ((i = 0; i < 100; i++)); do
      if [ -z "$pm" ] || ! kill -0 "$pm" 2>/dev/null; then break; fi
      sleep 0.1
    done
    if [ -n "$pm" ] && kill -0 "$pm" 2>/dev/null; then
      log "postgres (pid $pm) still running after pg_ctl stop; killing"
      kill -KILL "$pm" 2>/dev/null
    fi
  fi
  if [ -n "${REPORT_DONE:-}" ]; then
    remove_tmp 0
  else
    remove_tmp "$rc" "$TMP"/postgres.log "$TMP"/pgtarn.log
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

elapsed() { # seconds since $1 (an EPOCHREALTIME), 1 decimal
  awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN{ printf "%.1f", b - a }'
}

# ------------------------------------------------------------------- build --

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  commit+="-dirty"
fi
if [ -n "${PGTARN_BIN:-}" ]; then
  [ -x "$PGTARN_BIN" ] || die "PGTARN_BIN=$PGTARN_BIN is not an executable"
  BUILT_BIN=$PGTARN_BIN
  PGTARN_VERSION="$PGTARN_BIN (PGTARN_BIN; tree at $commit)"
else
  command -v cargo >/dev/null || die "cargo not found (or set PGTARN_BIN)"
  log "building pgtarn: cargo build --release (up to ${BUILD_TIMEOUT}s)"
  run_bounded "$BUILD_TIMEOUT" - cargo build --release --bin pgtarn --manifest-path "$ROOT/Cargo.toml" ||
    die "cargo build --release failed"
  BUILT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/pgtarn"
  PGTARN_VERSION="$commit (cargo build --release of the working tree)"
fi

# --------------------------------------------------------------- PostgreSQL --

find_pg_bin

TMP=$(mktemp -d /tmp/pgtarn-soak.XXXXXX)
chmod 700 "$TMP"
[ "$(id -u)" -eq 0 ] && chown postgres: "$TMP"
PG_DATA=$TMP/data
mkdir "$TMP/rounds"
cp "$BUILT_BIN" "$TMP/pgtarn" # a private copy: other builds may replace the original meanwhile

pg_initdb 'postgres-soak-secret'
as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null <<EOF

# benches/soak.sh
max_connections = 100
include_if_exists = 'soak_port.conf'
EOF
as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<EOF
local all all trust
host all all $HOST/32 scram-sha-256
EOF

pg_pid_file() { # the postmaster PID from postmaster.pid, or nothing
  local pid=""
  [ -f "$PG_DATA/postmaster.pid" ] && pid=$(head -1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)
  printf '%s' "$pid"
}
pg_start() {
  PG_STARTED=1
  as_pg timeout 120 "$PG_BIN/pg_ctl" start -D "$PG_DATA" -w -t 60 -l "$TMP/postgres.log" >/dev/null 2>&1 ||
    return 1
  PG_PM_PID=$(pg_pid_file)
}

PG_PORT=""
for try in 1 2 3; do
  free_port
  printf 'port = %s\n' "$FREE_PORT" | as_pg tee "$PG_DATA/soak_port.conf" >/dev/null
  log "starting postgres on $HOST:$FREE_PORT (try $try)"
  if pg_start; then
    PG_PORT=$FREE_PORT
    break
  fi
  as_pg timeout 60 "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 30 >/dev/null 2>&1 || true
  PG_STARTED=0
done
[ -n "$PG_PORT" ] || die "postgres did not start (see $TMP/postgres.log)"

su_psql() { timeout 120 psql -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PG_PORT" -U postgres -d "$@"; }
su_psql postgres -c "create role $APP_USER login password '$APP_PASSWORD'" \
  -c "create database $APP_DB owner $APP_USER" >&2 || die "could not create role/database"
PG_VERSION=$(su_psql postgres -Atc 'show server_version')

log "pgbench -i -s $SCALE (direct)"
PGPASSWORD=$APP_PASSWORD run_bounded 1800 "$TMP/pgbench-init.log" pgbench -i -q -s "$SCALE" -h "$HOST" \
  -p "$PG_PORT" -U "$APP_USER" "$APP_DB" ||
  { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ------------------------------------------------------------------- pgtarn --

PGT_PORT=""
METRICS=""
CUR_POOL_SIZE=$POOL_SIZE

# Writes pgtarn's config with pool_size $1, atomically (rename), so a reload
# never reads a half-written file.
write_config() {
  cat >"$TMP/pgtarn.toml.new" <<EOF
# written by benches/soak.sh
[pgtarn]
listen_addr = "$HOST:$PGT_PORT"
metrics_addr = "$METRICS"
max_client_conn = 2000
admin_users = ["$APP_USER"]
server_check_delay = "1s"
query_wait_timeout = "10s"

[databases.$APP_DB]
host = "$HOST"
port = $PG_PORT
pool_mode = "transaction"
pool_size = $1

[users.$APP_USER]
password = "$APP_PASSWORD"
EOF
  mv -f "$TMP/pgtarn.toml.new" "$TMP/pgtarn.toml"
}

# `SELECT 1` through pgtarn; the error (if any) in SQL1_ERR.
SQL1_ERR=""
select1() {
  local out rc=0
  out=$(PGPASSWORD=$APP_PASSWORD timeout 30 psql -X -q -h "$HOST" -p "$PGT_PORT" -U "$APP_USER" \
    -d "$APP_DB" -Atc 'select 1' 2>&1) || rc=$?
  if [ "$rc" -eq 0 ] && [ "$out" = 1 ]; then
    SQL1_ERR=""
    return 0
  fi
  SQL1_ERR=$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-200)
  [ -n "$SQL1_ERR" ] || SQL1_ERR="psql exit $rc"
  return 1
}

for try in 1 2 3; do
  free_port
  PGT_PORT=$FREE_PORT
  free_port
  METRICS="$HOST:$FREE_PORT"
  write_config "$POOL_SIZE"
  timeout 30 "$TMP/pgtarn" --check-config "$TMP/pgtarn.toml" >&2 ||
    die "pgtarn --check-config rejected $TMP/pgtarn.toml"
  log "starting pgtarn on $HOST:$PGT_PORT, metrics on $METRICS (try $try)"
  RUST_LOG=info "$TMP/pgtarn" --config "$TMP/pgtarn.toml" >>"$TMP/pgtarn.log" 2>&1 &
  PGT_PID=$!
  ok=0
  for ((i = 0; i < 60; i++)); do
    kill -0 "$PGT_PID" 2>/dev/null || break
    if select1 && curl -fs --max-time 5 "http://$METRICS/metrics" >/dev/null; then
      ok=1
      break
    fi
    sleep 0.5
  done
  [ "$ok" = 1 ] && break
  stop_pid "$PGT_PID" pgtarn
  PGT_PID=""
  log "pgtarn did not start on try $try: $(tail -n 1 "$TMP/pgtarn.log")"
  mv -f "$TMP/pgtarn.log" "$TMP/pgtarn-try$try.log" # only the running pgtarn's log is counted
done
[ -n "$PGT_PID" ] || {
  cat "$TMP/pgtarn.log" >&2
  die "pgtarn did not start"
}

# ----------------------------------------------------------------- samplers --

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$PGT_PID/status" 2>/dev/null || true; }
fd_count() {
  local n
  n=$(find "/proc/$PGT_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) || true
  printf '%s' "$n"
}
scrape() { # scrape FILE: pgtarn's /metrics into FILE (empty on failure)
  timeout 10 curl -fs --max-time 5 "http://$METRICS/metrics" >"$1" 2>/dev/null || : >"$1"
}
metric_sum() { # metric_sum FILE NAME: sum over all label sets, or "n/a"
  awk -v n="$2" '
    $1 == n || index($1, n "{") == 1 { s += $NF; found = 1 }
    END { if (found) printf "%.0f", s; else printf "n/a" }' "$1"
}
metric_by() { # metric_by FILE NAME LABEL: "value n, value n", sorted by count
  awk -v n="$2" -v l="$3" '
    index($1, n "{") == 1 {
      v = "?"
      if (match($1, l "=\"[^\"]*\"")) v = substr($1, RSTART + length(l) + 2, RLENGTH - length(l) - 3)
      s[v] += $NF
    }
    END { for (v in s) if (s[v] > 0) printf "%d %s\n", s[v], v }' "$1" |
    sort -rn | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $2, $1 }'
}
fmt_mib() { [ -n "${1:-}" ] && awk -v k="$1" 'BEGIN{ printf "%.1f MiB", k / 1024 }'; }

# --------------------------------------------------------------- warm-up --

if [ "$WARMUP" -gt 0 ]; then
  log "warm-up: pgbench -c $CLIENTS -j $JOBS -T $WARMUP $WORKLOAD through pgtarn"
  rc=0
  PGPASSWORD=$APP_PASSWORD run_bounded $((WARMUP + 60)) "$TMP/warmup.log" pgbench -h "$HOST" -p "$PGT_PORT" \
    -U "$APP_USER" -c "$CLIENTS" -j "$JOBS" -T "$WARMUP" -n "${WORKLOAD_ARGS[@]}" "$APP_DB" || rc=$?
  [ "$rc" -eq 0 ] || { cat "$TMP/warmup.log" >&2; die "warm-up pgbench through pgtarn failed (exit $rc)"; }
  sleep 1 # let pgtarn finish the clients' disconnects
fi
RSS_START=$(rss_kb)
FD_START=$(fd_count)
scrape "$TMP/metrics-start.txt"
log "after warm-up: pgtarn RSS $(fmt_mib "$RSS_START"), $FD_START fds"

# ------------------------------------------------------------------- soak --

# Rounds of pgbench until LOAD_END; one line per round in rounds.tsv:
# round, start and end (EPOCHREALTIME), -T, pgbench exit status.
load_loop() {
  local pid="" r=0 left secs t0 rc
  trap 'if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi; exit 143' TERM INT
  while :; do
    left=$((LOAD_END - EPOCHSECONDS))
    [ "$left" -ge 2 ] || break
    secs=$((left < ROUND ? left : ROUND))
    r=$((r + 1))
    t0=$EPOCHREALTIME
    # Started directly (not via a function) so that $! is timeout's PID:
    # timeout passes our TERM on to pgbench.
    PGPASSWORD=$APP_PASSWORD timeout --kill-after=10 $((secs + 60)) pgbench -h "$HOST" -p "$PGT_PORT" \
      -U "$APP_USER" -c "$CLIENTS" -j "$JOBS" -T "$secs" -n -P 5 "${WORKLOAD_ARGS[@]}" "$APP_DB" \
      >"$TMP/rounds/$r.log" 2>&1 &
    pid=$!
    rc=0
    wait "$pid" || rc=$?
    pid=""
    printf '%s\t%s\t%s\t%s\t%s\n' "$r" "$t0" "$EPOCHREALTIME" "$secs" "$rc" >>"$TMP/rounds.tsv"
    # A round that could not even start (e.g. logins refused): do not spin.
    if [ "$rc" -ne 0 ] && awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{ exit !(b - a < 1) }'; then sleep 1; fi
  done
}

# Events: one line per restart/reload in events.tsv: kind, start, end
# (EPOCHREALTIME), details.
RESTARTS=0
RELOADS=0
RELOADS_HUP=0
RELOADS_ADMIN=0
RECOVERY=() # seconds until SELECT 1 through pgtarn worked, per restart
PROBLEMS=()

# Tries SELECT 1 through pgtarn every 0.2 s for up to 60 s. PROBE_SECS:
# seconds (1 decimal) until it succeeded, or "timeout"; PROBE_FAILS: failed
# attempts; PROBE_ERR: the first error.
PROBE_SECS=""
PROBE_FAILS=0
PROBE_ERR=""
probe_pgtarn() {
  local t0=$EPOCHREALTIME
  PROBE_FAILS=0
  PROBE_ERR=""
  while :; do
    if select1; then
      PROBE_SECS=$(elapsed "$t0")
      return 0
    fi
    PROBE_FAILS=$((PROBE_FAILS + 1))
    [ -n "$PROBE_ERR" ] || PROBE_ERR=$SQL1_ERR
    if awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{ exit !(b - a > 60) }'; then
      PROBE_SECS=timeout
      return 1
    fi
    sleep 0.2
  done
}

# Restarts PostgreSQL; $1 = fast or kill. Sets PG_PM_PID.
restart_pg() {
  local kind=$1 t0=$EPOCHREALTIME old=$PG_PM_PID kids i took rec detail
  if [ "$kind" = fast ]; then
    log "restart: pg_ctl restart -m fast"
    as_pg timeout 120 "$PG_BIN/pg_ctl" restart -D "$PG_DATA" -m fast -w -t 60 -l "$TMP/postgres.log" >/dev/null 2>&1 ||
      die "pg_ctl restart failed"
    PG_PM_PID=$(pg_pid_file)
  else
    log "restart: kill -9 of the postmaster (pid $old), then pg_ctl start"
    kids=$(pgrep -P "$old" || true)
    as_pg kill -KILL "$old" || die "kill -9 of the postmaster failed"
    # Its backends notice and exit; the next postmaster needs them gone.
    for ((i = 0; i < 300; i++)); do
      local alive=0 p
      for p in $old $kids; do kill -0 "$p" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.1
    done
    for ((i = 1; i <= 5; i++)); do
      pg_start && break
      log "pg_start after kill -9 failed (try $i); retrying"
      sleep 1
    done
    if [ -z "$PG_PM_PID" ] || ! kill -0 "$PG_PM_PID" 2>/dev/null; then die "postgres did not come back after kill -9"; fi
  fi
  took=$(elapsed "$t0")
  probe_pgtarn || true
  rec=$PROBE_SECS
  RESTARTS=$((RESTARTS + 1))
  RECOVERY+=("$rec")
  detail="postgres back after ${took}s; SELECT 1 through pgtarn OK ${rec}s later"
  [ "$rec" = timeout ] && detail="postgres back after ${took}s; SELECT 1 through pgtarn still failing after 60 s"
  [ "$PROBE_FAILS" -gt 0 ] && detail+=" ($PROBE_FAILS failed attempt(s), first: \`$PROBE_ERR\`)"
  printf 'restart-%s\t%s\t%s\t%s\n' "$kind" "$t0" "$EPOCHREALTIME" "$detail" >>"$TMP/events.tsv"
  log "  $detail"
  if [ "$rec" = timeout ]; then
    PROBLEMS+=("after restart $RESTARTS ($kind), SELECT 1 through pgtarn kept failing for 60 s: \`$PROBE_ERR\`")
  fi
}

# Rewrites the config with the other pool_size and reloads: SIGHUP, or the
# admin console's RELOAD for the 2nd reload.
reload_pgtarn() {
  local t0=$EPOCHREALTIME how out rc=0 seen detail i
  if [ "$CUR_POOL_SIZE" -eq "$POOL_SIZE" ]; then CUR_POOL_SIZE=$((POOL_SIZE + 5)); else CUR_POOL_SIZE=$POOL_SIZE; fi
  write_config "$CUR_POOL_SIZE"
  RELOADS=$((RELOADS + 1))
  if [ "$RELOADS" -eq 2 ]; then
    how="admin RELOAD"
    RELOADS_ADMIN=$((RELOADS_ADMIN + 1))
    out=$(PGPASSWORD=$APP_PASSWORD timeout 30 psql -X -q -h "$HOST" -p "$PGT_PORT" -U "$APP_USER" pgtarn \
      -c RELOAD 2>&1) || rc=$?
    if [ "$rc" -ne 0 ]; then
      PROBLEMS+=("admin console RELOAD failed (psql exit $rc): \`$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-200)\`")
    fi
  else
    how="SIGHUP"
    RELOADS_HUP=$((RELOADS_HUP + 1))
    kill -HUP "$PGT_PID" 2>/dev/null || PROBLEMS+=("SIGHUP to pgtarn failed: process gone?")
  fi
  # The pool_size pgtarn reports afterwards.
  seen="?"
  for ((i = 0; i < 20; i++)); do
    sleep 0.25
    scrape "$TMP/metrics-reload.txt"
    seen=$(awk 'index($1, "pgtarn_pool_max_size{") == 1 { print $NF; exit }' "$TMP/metrics-reload.txt")
    [ "$seen" = "$CUR_POOL_SIZE" ] && break
  done
  detail="$how, pool_size -> $CUR_POOL_SIZE; pgtarn_pool_max_size = ${seen:-?}"
  printf 'reload\t%s\t%s\t%s\n' "$t0" "$EPOCHREALTIME" "$detail" >>"$TMP/events.tsv"
  log "reload $RELOADS: $detail"
  if [ "${seen:-}" != "$CUR_POOL_SIZE" ]; then
    PROBLEMS+=("reload $RELOADS ($how): pool_size $CUR_POOL_SIZE written but pgtarn_pool_max_size is still ${seen:-missing} 5 s later")
  fi
}

# Server connections of user app as PostgreSQL sees them (pg_stat_activity,
# over the Unix socket as postgres): the most seen, and when.
UPSTREAM_MAX=0
UPSTREAM_MAX_AT=""
UPSTREAM_SAMPLES=0
upstream_sample() {
  local n
  n=$(timeout 5 psql -X -q -h "$TMP" -p "$PG_PORT" -U postgres -d postgres -Atc \
    "select count(*) from pg_stat_activity where usename = '$APP_USER' and backend_type = 'client backend'" \
    2>/dev/null) || return 0
  is_uint "$n" || return 0
  UPSTREAM_SAMPLES=$((UPSTREAM_SAMPLES + 1))
  printf '%s\t%s\t%s\n' "$((EPOCHSECONDS - SOAK_START))" "$n" "$CUR_POOL_SIZE" >>"$TMP/upstream.tsv"
  if [ "$n" -gt "$UPSTREAM_MAX" ]; then
    UPSTREAM_MAX=$n
    UPSTREAM_MAX_AT="$((EPOCHSECONDS - SOAK_START)) s, pool_size then $CUR_POOL_SIZE"
  fi
}

RSS_SAMPLES=()
FD_SAMPLES=()
sample() {
  local r f
  r=$(rss_kb)
  f=$(fd_count)
  [ -n "$r" ] && RSS_SAMPLES+=("$r")
  [ -n "$f" ] && FD_SAMPLES+=("$f")
}

: >"$TMP/rounds.tsv"
: >"$TMP/upstream.tsv"
: >"$TMP/events.tsv"
SOAK_START=$EPOCHSECONDS
SOAK_START_RT=$EPOCHREALTIME
LOAD_END=$((SOAK_START + DURATION))
log "soak: ${DURATION}s of pgbench -c $CLIENTS -j $JOBS $WORKLOAD in ${ROUND}s rounds; restart every ${RESTART_EVERY}s, reload every ${RELOAD_EVERY}s"
load_loop &
LOAD_PID=$!

next_restart=$RESTART_EVERY
next_reload=$RELOAD_EVERY
next_sample=0
next_upstream=0
while kill -0 "$LOAD_PID" 2>/dev/null; do
  t=$((EPOCHSECONDS - SOAK_START))
  kill -0 "$PGT_PID" 2>/dev/null || {
    PROBLEMS+=("pgtarn (pid $PGT_PID) exited during the soak, ${t}s in")
    log "pgtarn exited ${t}s into the soak"
    break
  }
  if [ "$RESTART_EVERY" -gt 0 ] && [ "$t" -ge "$next_restart" ] && [ "$next_restart" -le $((DURATION - 5)) ]; then
    if [ "$RESTARTS" -eq 1 ]; then restart_pg kill; else restart_pg fast; fi
    next_restart=$((next_restart + RESTART_EVERY))
  elif [ "$RELOAD_EVERY" -gt 0 ] && [ "$t" -ge "$next_reload" ] && [ "$next_reload" -lt "$DURATION" ]; then
    reload_pgtarn
    next_reload=$((next_reload + RELOAD_EVERY))
  fi
  if [ "$t" -ge "$next_sample" ]; then
    sample
    next_sample=$((t + SAMPLE_EVERY))
  fi
  if [ "$t" -ge "$next_upstream" ]; then
    upstream_sample
    next_upstream=$((t + 2))
  fi
  sleep 0.5
done
RESTARTS_KILL=$(grep -c '^restart-kill' "$TMP/events.tsv" || true)
RESTARTS_FAST=$((RESTARTS - RESTARTS_KILL))
wait "$LOAD_PID" 2>/dev/null || true
LOAD_PID=""
SOAK_SECS=$(elapsed "$SOAK_START_RT")
log "load done after ${SOAK_SECS}s"

# ------------------------------------------------------------------ final --

PGT_UP_AFTER_LOAD=no
kill -0 "$PGT_PID" 2>/dev/null && PGT_UP_AFTER_LOAD=yes
sleep 2 # clients' disconnects
RSS_END=$(rss_kb)
FD_END=$(fd_count)
scrape "$TMP/metrics-load.txt"
log "after the load: pgtarn up: $PGT_UP_AFTER_LOAD, RSS $(fmt_mib "$RSS_END"), $FD_END fds"

FINAL_FIRST="not run"
FINAL_PAR="not run"
FINAL_RESTART=""
if [ "$PGT_UP_AFTER_LOAD" = yes ]; then
  # One more restart with the pool idle: every pooled server connection is
  # now dead, and pgtarn must notice instead of handing one out.
  log "final: pg_ctl restart -m fast with the pool idle, then SELECT 1 through pgtarn"
  sleep 1.5 # idle longer than server_check_delay
  t0=$EPOCHREALTIME
  as_pg timeout 120 "$PG_BIN/pg_ctl" restart -D "$PG_DATA" -m fast -w -t 60 -l "$TMP/postgres.log" >/dev/null 2>&1 ||
    die "final pg_ctl restart failed"
  PG_PM_PID=$(pg_pid_file)
  FINAL_RESTART="postgres back after $(elapsed "$t0")s"
  if select1; then
    FINAL_FIRST="ok"
  else
    FINAL_FIRST="FAILED: \`$SQL1_ERR\`"
    PROBLEMS+=("the first SELECT 1 through pgtarn after the final restart failed: \`$SQL1_ERR\`")
  fi
  # POOL_SIZE concurrent sessions, each holding a server for 0.3 s, so that
  # every idle server connection of the pool is handed out.
  n=$CUR_POOL_SIZE
  pids=()
  for ((i = 0; i < n; i++)); do
    PGPASSWORD=$APP_PASSWORD timeout 60 psql -X -q -h "$HOST" -p "$PGT_PORT" -U "$APP_USER" -d "$APP_DB" \
      -Atc 'select 1 from pg_sleep(0.3)' >"$TMP/final-$i.out" 2>&1 &
    pids+=($!)
  done
  okn=0
  for ((i = 0; i < n; i++)); do
    if wait "${pids[$i]}" && [ "$(cat "$TMP/final-$i.out")" = 1 ]; then okn=$((okn + 1)); fi
  done
  FINAL_PAR="$okn/$n ok"
  if [ "$okn" -ne "$n" ]; then
    err=$(grep -hv '^1$' "$TMP"/final-*.out | head -1 | cut -c1-200 || true)
    FINAL_PAR+=" (first error: \`$err\`)"
    PROBLEMS+=("after the final restart, $((n - okn)) of $n concurrent SELECT 1 through pgtarn failed: \`$err\`")
  fi
  log "final: first SELECT 1 $FINAL_FIRST; concurrent: $FINAL_PAR"
fi
PGT_UP=no
kill -0 "$PGT_PID" 2>/dev/null && PGT_UP=yes
[ "$PGT_UP" = yes ] || PROBLEMS+=("pgtarn is not running at the end (see its log)")
sleep 0.5
scrape "$TMP/metrics-end.txt"

# ----------------------------------------------------------------- rounds --

ROUND_ROWS=()
TOTAL_TX=0
TOTAL_FAILED=0
TOTAL_ABORTED=0
ROUNDS=0
ROUNDS_BAD=0
ROUNDS_NOSTART=0
TOTAL_SECS=0
while IFS=$'\t' read -r r t0 t1 secs rc; do
  f="$TMP/rounds/$r.log"
  tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$f" | head -1)
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$f" | head -1)
  aborted=$(grep -cE 'client [0-9]+ (script [0-9]+ )?aborted' "$f" || true)
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$f" | head -1)
  tx=${tx:-0}
  failed=${failed:-0}
  ROUNDS=$((ROUNDS + 1))
  TOTAL_TX=$((TOTAL_TX + tx))
  TOTAL_FAILED=$((TOTAL_FAILED + failed))
  TOTAL_ABORTED=$((TOTAL_ABORTED + aborted))
  # Events overlapping this round (0.5 s of slack at both ends).
  ev=""
  restart_overlap=0
  while IFS=$'\t' read -r kind e0 e1 _; do
    if awk -v a="$t0" -v b="$t1" -v c="$e0" -v d="$e1" 'BEGIN{ exit !(c <= b + 0.5 && d >= a - 0.5) }'; then
      ev+="${ev:+, }$kind"
      [[ $kind == restart-* ]] && restart_overlap=1
    fi
  done <"$TMP/events.tsv"
  from=$(awk -v a="$t0" -v s="$SOAK_START_RT" 'BEGIN{ printf "%.0f", a - s }')
  to=$(awk -v a="$t1" -v s="$SOAK_START_RT" 'BEGIN{ printf "%.0f", a - s }')
  TOTAL_SECS=$(awk -v x="$TOTAL_SECS" -v a="$t0" -v b="$t1" 'BEGIN{ printf "%.1f", x + b - a }')
  first=$(grep -m1 -E 'error|FATAL|ERROR|aborted' "$f" | sed -E 's/^pgbench: //' | cut -c1-160 || true)
  nostart=""
  if [ -z "$tps" ] && [ "$rc" -ne 0 ]; then
    nostart=" (no run)"
    ROUNDS_NOSTART=$((ROUNDS_NOSTART + 1))
  fi
  if [ "$rc" -ne 0 ] || [ "$failed" -gt 0 ] || [ "$aborted" -gt 0 ]; then
    ROUNDS_BAD=$((ROUNDS_BAD + 1))
    if [ "$restart_overlap" = 0 ]; then
      PROBLEMS+=("round $r (${from}-${to} s) had failures without an upstream restart during it (exit $rc, $aborted aborted clients, $failed failed tx${ev:+; events: $ev}): \`$first\`")
    fi
  fi
  ROUND_ROWS+=("| $r | ${from}–${to} | $rc$nostart | $tx | $(fmt 0 "${tps:-}") | $failed | $aborted | ${ev:-–} | ${first:+\`$first\`} |")
done <"$TMP/rounds.tsv"

# Why clients were aborted, over all rounds: the error after "aborted...".
ABORT_REASONS=$(cat "$TMP"/rounds/*.log 2>/dev/null | grep -E 'client [0-9]+ (script [0-9]+ )?aborted' |
  sed -E 's/.*aborted[^:;]*[:;] *//; s/^(FATAL|ERROR): +//; s/ \(os error [0-9]+\)//' |
  sort | uniq -c | sort -rn | head -6 | sed -E 's/^ *([0-9]+) (.*)/\2: \1/' | paste -sd ';' - | sed 's/;/; /g' || true)

NOTES=()
CONNECT_ABORTS=$(cat "$TMP"/rounds/*.log 2>/dev/null |
  grep -cE 'aborted[^:]*: FATAL: +(could not connect to server|the database system is (shutting down|starting up|not yet accepting))' || true)
if [ "$CONNECT_ABORTS" -gt 0 ]; then
  NOTES+=("$CONNECT_ABORTS aborted clients got FATAL because a *new* server connection failed while PostgreSQL was restarting (\"could not connect\", \"shutting down\", \"not yet accepting\"): they held no server, so no transaction of theirs was lost; pgtarn disconnects them at the first failed connect attempt instead of letting them wait up to query_wait_timeout (10s) for the upstream to return")
fi

# ---------------------------------------------------------------- metrics --

M=$TMP/metrics-end.txt
[ -s "$M" ] || M=$TMP/metrics-load.txt
if [ ! -s "$M" ]; then PROBLEMS+=("could not scrape http://$METRICS/metrics at the end"); fi
OPENED=$(metric_sum "$M" pgtarn_pool_server_connections_opened_total)
CLOSED=$(metric_sum "$M" pgtarn_pool_server_connections_closed_total)
CLOSED_BY=$(metric_by "$M" pgtarn_pool_server_connections_closed_total reason)
ERRORS=$(metric_sum "$M" pgtarn_pool_errors_total)
ERRORS_BY=$(metric_by "$M" pgtarn_pool_errors_total class)
RELOADS_M=$(metric_by "$M" pgtarn_reloads_total result)
RELOADS_OK=$(awk 'index($1, "pgtarn_reloads_total{") == 1 && $1 ~ /result="ok"/ { s += $NF } END { printf "%d", s }' "$M")
WAIT_TIMEOUTS=$(metric_sum "$M" pgtarn_pool_wait_timeouts_total)
LOGINS=$(metric_sum "$M" pgtarn_pool_client_logins_total)
PGT_TX=$(metric_sum "$M" pgtarn_pool_transactions_total)
open_in() { awk 'index($1, "pgtarn_pool_size{") == 1 { s += $NF } END { printf "%d", s }' "$1"; }
OPEN_NOW=$(open_in "$M")
OPEN_START=$(open_in "$TMP/metrics-start.txt")
OPEN_LOAD=$(open_in "$TMP/metrics-load.txt")
UPSTREAM_OVER=$(awk -F'\t' '$2 > $3' "$TMP/upstream.tsv" | wc -l)
UPSTREAM_OVER_FIRST=$(awk -F'\t' '$2 > $3 { printf "%s s: %s connections, pool_size %s", $1, $2, $3; exit }' "$TMP/upstream.tsv")
if [ "$UPSTREAM_OVER" -gt 0 ]; then
  PROBLEMS+=("$UPSTREAM_OVER of $UPSTREAM_SAMPLES pg_stat_activity samples saw more server connections than the pool_size configured at the time (first: $UPSTREAM_OVER_FIRST): a reloaded pool_size does not apply to clients already connected")
fi
UNCOUNTED=""
if is_uint "$OPENED" && is_uint "$CLOSED"; then
  UNCOUNTED=$((OPENED - CLOSED - OPEN_NOW))
  if [ "$UNCOUNTED" -gt 0 ]; then
    PROBLEMS+=("$UNCOUNTED server connections were opened but never counted as closed (opened $OPENED - closed $CLOSED - open at the end $OPEN_NOW): some closes bypass pgtarn_pool_server_connections_closed_total and the 'server connection closed' log line")
  fi
fi
if [ "$UPSTREAM_MAX" -gt $((POOL_SIZE + 5)) ]; then
  PROBLEMS+=("PostgreSQL saw $UPSTREAM_MAX connections of user $APP_USER at once ($UPSTREAM_MAX_AT), more than the largest pool_size ($((POOL_SIZE + 5)))")
fi
if [ -s "$M" ] && [ "$RELOADS_OK" -ne "$RELOADS" ]; then
  PROBLEMS+=("$RELOADS reloads done but pgtarn_reloads_total{result=\"ok\"} is $RELOADS_OK ($RELOADS_M)")
fi

# Growth checks (start and end are both taken with no client connected).
if [ -n "$RSS_START" ] && [ -n "$RSS_END" ] &&
  awk -v a="$RSS_START" -v b="$RSS_END" 'BEGIN{ exit !(b > a * 1.5 && b - a > 20480) }'; then
  PROBLEMS+=("pgtarn RSS grew from $(fmt_mib "$RSS_START") to $(fmt_mib "$RSS_END")")
fi
if [ -n "$FD_START" ] && [ -n "$FD_END" ] && [ "$FD_END" -gt $((FD_START + POOL_SIZE + 10)) ]; then
  PROBLEMS+=("pgtarn open fds grew from $FD_START to $FD_END with no client connected")
fi
rss_min=$(printf '%s\n' "${RSS_SAMPLES[@]}" "$RSS_START" "$RSS_END" | grep . | sort -n | head -1 || true)
rss_max=$(printf '%s\n' "${RSS_SAMPLES[@]}" "$RSS_START" "$RSS_END" | grep . | sort -n | tail -1 || true)
fd_max=$(printf '%s\n' "${FD_SAMPLES[@]}" "$FD_START" "$FD_END" | grep . | sort -n | tail -1 || true)

# ------------------------------------------------------------------- logs --

# tracing's format: "<timestamp>  LEVEL target: message"; level is field 2.
LOG=$TMP/pgtarn.log
LOG_LINES=$(wc -l <"$LOG")
LOG_WARN=$(awk '$2 == "WARN"' "$LOG" | wc -l)
LOG_ERROR=$(awk '$2 == "ERROR"' "$LOG" | wc -l)
RETIRED=$(grep -c 'pool retired by reload' "$LOG" || true)
if [ "$RETIRED" -gt 0 ]; then
  # Every reload here changes only pool_size, which pgtarn should apply to
  # the existing pool (src/pool/registry.rs: "Other pools take the new sizes").
  PROBLEMS+=("$RETIRED of $RELOADS reloads retired the pool although only pool_size changed: new clients got a new pool whose server connections were all opened afresh, while the old ones were closed (reason label: lifetime)")
fi
LOG_OTHER=$(awk '$2 !~ /^(TRACE|DEBUG|INFO|WARN|ERROR)$/' "$LOG" | wc -l)
# shellcheck disable=SC2016 # literal backticks: Markdown code
top_lines() { # the most frequent messages of level $1, numbers and addresses blanked
  awk -v l="$1" '$2 == l { $1 = ""; print }' "$LOG" |
    sed -E 's/[0-9]+(\.[0-9]+)*/N/g' | sort | uniq -c | sort -rn | head -4 |
    sed -E 's/^ *([0-9]+) +(.*)/\1× `\2`/' | cut -c1-260
}
if [ "$LOG_OTHER" -gt 0 ]; then
  PROBLEMS+=("pgtarn wrote $LOG_OTHER line(s) that are not log records (panic?); first: \`$(awk '$2 !~ /^(TRACE|DEBUG|INFO|WARN|ERROR)$/' "$LOG" | head -1 | cut -c1-200)\`")
fi
if grep -q 'panicked' "$LOG"; then
  PROBLEMS+=("pgtarn panicked: \`$(grep -m1 'panicked' "$LOG" | cut -c1-200)\`")
fi

# ----------------------------------------------------------------- report --

ELAPSED=$(elapsed "$START_EPOCH")
report() {
  echo "## pgtarn soak: ${DURATION}s under load with upstream restarts and reloads"
  echo
  echo "- date: $START_DATE; whole run ${ELAPSED}s; machine: $(nproc) CPU, load at end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- pgtarn $PGTARN_VERSION; PostgreSQL $PG_VERSION (fsync=off); $(pgbench --version)"
  echo "- load: pgbench -c $CLIENTS -j $JOBS $WORKLOAD -n, ${ROUND}s rounds; pool_mode=transaction, pool_size $POOL_SIZE/$((POOL_SIZE + 5)), query_wait_timeout 10s, server_check_delay 1s"
  echo "- command: \`$COMMAND\`"
  echo
  echo "| metric | value |"
  echo "|---|---|"
  echo "| load duration / rounds | ${SOAK_SECS}s / $ROUNDS rounds ($ROUNDS_BAD with failures, $ROUNDS_NOSTART could not start) |"
  echo "| committed transactions (pgbench, sum of rounds) | $TOTAL_TX ($(awk -v n="$TOTAL_TX" -v s="$TOTAL_SECS" 'BEGIN{ if (s > 0) printf "%.0f", n / s }') tx/s); pgtarn_pool_transactions_total $PGT_TX (incl. warm-up and failed) |"
  echo "| failed transactions / aborted clients (sum) | $TOTAL_FAILED / $TOTAL_ABORTED (per round below) |"
  echo "| aborted clients by error | ${ABORT_REASONS:-–} |"
  echo "| upstream restarts under load | $RESTARTS ($RESTARTS_FAST \`pg_ctl restart -m fast\`, $RESTARTS_KILL \`kill -9\` + start) + 1 fast with the pool idle before the final check |"
  echo "| SELECT 1 through pgtarn OK again after each restart (s) | ${RECOVERY[*]:-–} |"
  echo "| config reloads | $RELOADS ($RELOADS_HUP SIGHUP, $RELOADS_ADMIN admin \`RELOAD\`); pgtarn_reloads_total: ${RELOADS_M:-none} |"
  echo "| server connections opened / closed | $OPENED / $CLOSED (open after warm-up: $OPEN_START, after the load: $OPEN_LOAD, at the end: $OPEN_NOW; opened − closed − open = ${UNCOUNTED:-?}) |"
  echo "| most server connections PostgreSQL saw at once (pg_stat_activity, every 2 s) | $UPSTREAM_MAX${UPSTREAM_MAX_AT:+ (at $UPSTREAM_MAX_AT)}; $UPSTREAM_SAMPLES samples, $UPSTREAM_OVER above the pool_size configured at the time${UPSTREAM_OVER_FIRST:+ (first: $UPSTREAM_OVER_FIRST)} |"
  echo "| pools retired by reload (pgtarn log) | $RETIRED |"
  echo "| closed, by reason | ${CLOSED_BY:-–} |"
  echo "| errors sent to clients, by SQLSTATE class | ${ERRORS_BY:-none} (total $ERRORS); query_wait_timeouts $WAIT_TIMEOUTS; client logins $LOGINS |"
  echo "| pgtarn RSS after warm-up → end (no clients) | $(fmt_mib "$RSS_START") → $(fmt_mib "$RSS_END") (under load: $(fmt_mib "$rss_min") – $(fmt_mib "$rss_max")) |"
  echo "| pgtarn open fds after warm-up → end (no clients) | $FD_START → $FD_END (max under load $fd_max) |"
  echo "| pgtarn up at the end | $PGT_UP |"
  echo "| final SELECT 1 after the last restart | first attempt: $FINAL_FIRST; $FINAL_PAR concurrent ($FINAL_RESTART) |"
  echo "| pgtarn log (RUST_LOG=info) | $LOG_LINES lines: $LOG_ERROR ERROR, $LOG_WARN WARN |"
  echo
  echo "### Rounds"
  echo
  echo "| round | s into soak | exit | transactions | tps | failed tx | aborted clients | events | first error |"
  echo "|---:|---|---|---:|---:|---:|---:|---|---|"
  printf '%s\n' "${ROUND_ROWS[@]}"
  echo
  echo "### Restarts and reloads"
  echo
  local kind e0 e1 detail
  while IFS=$'\t' read -r kind e0 e1 detail; do
    echo "- $(awk -v a="$e0" -v s="$SOAK_START_RT" 'BEGIN{ printf "%.0f", a - s }') s: $kind: $detail"
  done <"$TMP/events.tsv"
  if [ "$LOG_ERROR" -gt 0 ] || [ "$LOG_WARN" -gt 0 ]; then
    echo
    echo "### Most frequent pgtarn log warnings and errors"
    echo
    [ "$LOG_ERROR" -gt 0 ] && top_lines ERROR | sed 's/^/- ERROR /'
    [ "$LOG_WARN" -gt 0 ] && top_lines WARN | sed 's/^/- WARN /'
  fi
  if [ ${#NOTES[@]} -gt 0 ]; then
    echo
    echo "### Observations"
    echo
    local n
    for n in "${NOTES[@]}"; do echo "- $n"; done
  fi
  echo
  echo "### Problems"
  echo
  if [ ${#PROBLEMS[@]} -eq 0 ]; then
    echo "None: pgtarn stayed up, recovered from every restart, applied every reload, and failures were confined to rounds that overlapped a restart."
  else
    local p
    for p in "${PROBLEMS[@]}"; do echo "- $p"; done
  fi
}

REPORT=$(report)
printf '%s\n' "$REPORT"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$(dirname "$OUT")"
  printf '%s\n' "$REPORT" >"$OUT"
  log "report written to $OUT"
fi
REPORT_DONE=1
log "done in ${ELAPSED}s"
[ ${#PROBLEMS[@]} -eq 0 ]
