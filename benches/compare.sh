#!/usr/bin/env bash
# benches/compare.sh: pgbench side by side, directly against PostgreSQL,
# through PgBouncer and through pgtarn, in one run on this machine.
#
# It builds pgtarn (release), starts a throwaway PostgreSQL (initdb into a
# temp dir, random loopback port, SCRAM auth), initialises pgbench tables,
# starts PgBouncer and pgtarn in transaction mode with the same pool size in
# front of it, runs every case against every target (alternating: direct,
# pgbouncer, pgtarn, direct, ... REPS times), and prints a Markdown table of
# median TPS, ratios, the poolers' CPU time per transaction and the mean
# latency. Everything it starts is stopped by PID on exit (also on Ctrl-C or
# TERM) and the temp dir is removed. All traffic stays on 127.0.0.1.
#
# Usage:
#   benches/compare.sh                          # all cases, DURATION=10 REPS=3
#   DURATION=10 REPS=3 benches/compare.sh
#   CASES="select10 prepared50" DURATION=5 REPS=1 OUT=/tmp/bench.md benches/compare.sh
#
# Environment knobs (defaults in brackets):
#   DURATION    seconds per pgbench run (-T)                          [10]
#   REPS        repetitions per case and target; medians are reported [3]
#   CASES       space-separated subset of the cases below             [all]
#   TARGETS     subset of "direct pgbouncer pgtarn"                   [all]
#   SCALE       pgbench -i scale factor                               [10]
#   POOL_SIZE   server connections per pool (both poolers)            [20]
#   JOBS        pgbench worker threads (-j)                           [2]
#   SAMPLE      pgbench --sampling-rate for the per-transaction logs that
#               the p50/p99 latencies come from                       [0.1]
#   RATE        total transactions/s of the latency10 case (-R)     [2000]
#   IDLE_CONNS  idle logged-in clients held open for the idle10k case [10000]
#   OUT         also write the Markdown report to this file           [unset]
#   PGTARN_BIN  use this pgtarn binary instead of `cargo build --release`
#   PGTARN_REF  build this git ref (e.g. HEAD) instead of the working tree:
#               `git archive REF` into target/bench-src, built with
#               CARGO_TARGET_DIR=target/bench-ref (kept between runs), so
#               uncommitted edits in src/ are left out      [working tree]
#   PG_BINDIR   PostgreSQL server binaries (initdb, postgres, pg_ctl)
#               [newest /usr/lib/postgresql/*/bin holding initdb]
#   PGBOUNCER_BIN  pgbouncer binary [pgbouncer on PATH]; if none is found
#               the PgBouncer column is skipped with a message
#               (Debian: apt-get install -y pgbouncer)
#   PGB_AUTH    what PgBouncer's auth_file holds for "app": "plain" (the
#               password, so PgBouncer can answer SCRAM on both sides) or
#               "verifier" (the SCRAM verifier read from pg_authid)  [plain]
#   BUILD_TIMEOUT  seconds allowed for cargo build                    [1800]
#   KEEP_TMP=1  keep the temp dir (logs, configs) instead of removing it
#
# Cases (all with -j JOBS -T DURATION, SCRAM login as role "app" unless said):
#   select10    -S -c 10                 select-only, simple protocol
#   latency10   -S -c 10 -R RATE         the same, rate-limited to RATE tx/s in
#               all so that no target saturates the machine: the latency a
#               pooler adds per transaction (with the machine saturated, as in
#               select10, a closed loop's latency is just clients / TPS).
#               Its latencies leave out pgbench's schedule lag (the wait for
#               the transaction's scheduled start).
#   select100   -S -c 100                (direct: 100 backends; max_connections=200)
#   select1000  -S -c 1000               direct cannot connect (max_connections=200):
#               it is run and reported as failed
#   tpcb50      -c 50                    TPC-B-like read/write
#   extended50  -S -M extended -c 50     unnamed prepared statements
#   prepared50  -S -M prepared -c 50     named prepared statements (needs
#               PgBouncer >= 1.21 with max_prepared_statements, which is set
#               when the installed version has it; older ones fail this case)
#   tls50       -S -c 50, sslmode=require: TLSv1.3 between pgbench and its
#               target (Postgres or the pooler; P-256 certificates made with
#               openssl); the poolers talk to Postgres in plain TCP (PgBouncer
#               1.18 has no per-database server TLS; benches/tls.sh measures
#               pgtarn with TLS on both hops)
#   connect_scram  -C -S -c 10           a new SCRAM login per transaction:
#               TPS = new logins/s
#   connect_trust  -C -S -c 10           the same with trust auth (role "tapp",
#               database "apptrust" on the poolers; Postgres trusts tapp, so
#               the poolers log in upstream without a password)
#   idle10k     no pgbench: IDLE_CONNS trust logins held open (python
#               asyncio, benches/idle_clients.py) against each pooler in turn;
#               reports the pooler's resident memory (VmRSS) before and with
#               them, and the peak (VmHWM)
# The first run of each case lets pgbench vacuum (it is always a direct run
# when direct is among TARGETS); every other run uses -n.
#
# Latency: "mean" is pgbench's "latency average"; p50 and p99 come from
# pgbench's per-transaction logs (--log --sampling-rate=SAMPLE), pooled over
# the run's threads; medians over REPS are reported.
#
# Pooler "µs CPU/tx" is utime+stime of the pooler process (all threads, from
# /proc/PID/stat fields 14+15, in CLK_TCK ticks) over the run, divided by the
# transactions pgbench processed; it includes the cost of the clients' SCRAM
# logins. "outside CPU %" in the noise table is the share of the whole
# machine's CPU used during the runs by processes that are not part of the
# benchmark (not PostgreSQL, the poolers or pgbench): other people's builds.
#
# The load average is printed too, but on 2 cores it mostly counts this
# benchmark's own runnable clients; "outside CPU %" is the better noise gauge.
#
# Time: about 10 pgbench cases x 3 targets x REPS x (DURATION + ~0.5 s) plus
# idle10k, build and setup: ~16 min at the defaults, ~9 min at DURATION=5.
# Progress goes to stderr; the report goes to stdout (and OUT).
# Needs: bash 4+, pgbench and psql on PATH, PostgreSQL server binaries,
# coreutils timeout, pgrep; when run as root, the `postgres` OS user.

set -euo pipefail

KNOBS=(DURATION REPS CASES TARGETS SCALE POOL_SIZE JOBS SAMPLE RATE IDLE_CONNS OUT PGTARN_BIN PGTARN_REF PG_BINDIR
  PGBOUNCER_BIN PGB_AUTH BUILD_TIMEOUT KEEP_TMP)
# The command as given, with the knobs that were set, for the report.
COMMAND=""
for knob in "${KNOBS[@]}"; do
  if [ -n "${!knob+x}" ]; then
    COMMAND+="$knob=$(printf '%q' "${!knob}") "
  fi
done
COMMAND+="$(printf '%q' "$0")"
for arg in "$@"; do COMMAND+=" $(printf '%q' "$arg")"; done

DURATION=${DURATION:-10}
REPS=${REPS:-3}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}
JOBS=${JOBS:-2}
SAMPLE=${SAMPLE:-0.1}
RATE=${RATE:-2000}
IDLE_CONNS=${IDLE_CONNS:-10000}
PGB_AUTH=${PGB_AUTH:-plain}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
KEEP_TMP=${KEEP_TMP:-0}
ALL_CASES="select10 latency10 select100 select1000 tpcb50 extended50 prepared50 tls50 connect_scram connect_trust idle10k"
CASES=${CASES:-$ALL_CASES}
TARGETS=${TARGETS:-direct pgbouncer pgtarn}

APP_USER=app
APP_PASSWORD=app-secret
APP_DB=app
TRUST_USER=tapp
TRUST_DB=apptrust # the poolers' name for database app with trust logins
HOST=127.0.0.1

declare -A CASE_ARGS=(
  [select10]="-S -c 10"
  [latency10]="-S -c 10 -R $RATE"
  [select100]="-S -c 100"
  [select1000]="-S -c 1000"
  [tpcb50]="-c 50"
  [extended50]="-S -M extended -c 50"
  [prepared50]="-S -M prepared -c 50"
  [tls50]="-S -c 50"
  [connect_scram]="-C -S -c 10"
  [connect_trust]="-C -S -c 10"
  [idle10k]="(idle clients, no pgbench)"
)
# sslmode per case (default disable).
declare -A CASE_SSL=([tls50]=require)
# Cases that log in as TRUST_USER (trust auth) instead of APP_USER (SCRAM).
declare -A CASE_TRUST=([connect_trust]=1)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${OUT:-}" ] && [[ $OUT != /* ]]; then OUT="$PWD/$OUT"; fi
# Work from / so that commands run as the postgres user never lack a cwd.
cd /
export PGSSLMODE=disable PGGSSENCMODE=disable
START_EPOCH=$EPOCHREALTIME
START_DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for knob in DURATION REPS SCALE POOL_SIZE JOBS RATE BUILD_TIMEOUT IDLE_CONNS; do
  if ! is_uint "${!knob}" || [ "${!knob}" -eq 0 ]; then die "$knob must be a positive integer (got '${!knob}')"; fi
done
for c in $CASES; do
  [ -n "${CASE_ARGS[$c]+x}" ] || die "unknown case '$c' in CASES (known: $ALL_CASES)"
done
for t in $TARGETS; do
  case $t in direct | pgbouncer | pgtarn) ;; *) die "unknown target '$t' in TARGETS (known: direct pgbouncer pgtarn)" ;; esac
done
case $PGB_AUTH in plain | verifier) ;; *) die "PGB_AUTH must be plain or verifier" ;; esac
command -v pgbench >/dev/null || die "pgbench not found on PATH (Debian: apt-get install -y postgresql-client)"
command -v psql >/dev/null || die "psql not found on PATH (Debian: apt-get install -y postgresql-client)"
command -v timeout >/dev/null || die "timeout (coreutils) not found"
command -v pgrep >/dev/null || die "pgrep (procps) not found"
command -v openssl >/dev/null || die "openssl not found (certificates for tls50)"
if [[ " $CASES " == *" idle10k "* ]]; then
  command -v python3 >/dev/null || die "python3 not found (idle10k)"
fi
# pgbench with 1,000 clients, the poolers and the idle clients need many
# descriptors: raise the soft limit as far as the hard one allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((IDLE_CONNS + 1000)) ]; then
  log "warning: open files limit is $NOFILE; select1000/idle10k may fail (raise ulimit -Hn)"
fi

# ---------------------------------------------------------------- processes --

TMP=""
PG_DATA=""
PG_BIN=""
PG_STARTED=0
PGB_PID=""
PGT_PID=""
IDLE_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_pid "$CHILD_PID" "child"
  stop_pid "$IDLE_PID" "idle clients"
  stop_pid "$PGT_PID" "pgtarn"
  stop_pid "$PGB_PID" "pgbouncer"
  if [ "$PG_STARTED" = 1 ] && [ -n "$PG_DATA" ]; then
    local pm=""
    [ -f "$PG_DATA/postmaster.pid" ] && pm=$(head -1 "$PG_DATA/postmaster.pid")
    as_pg timeout 60 "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 30 >/dev/null 2>&1
    # pg_ctl returns once postmaster.pid is gone; give the process a moment to exit.
    local i
    for ((i = 0; i < 100; i++)); do
      if [ -z "$pm" ] || ! kill -0 "$pm" 2>/dev/null; then break; fi
      sleep 0.1
    done
    if [ -n "$pm" ] && kill -0 "$pm" 2>/dev/null; then
      log "postgres (pid $pm) still running after pg_ctl stop; killing"
      kill -KILL "$pm" 2>/dev/null
    fi
  fi
  remove_tmp "$rc" "$TMP"/postgres.log "$TMP"/pgbouncer.log "$TMP"/pgtarn.log
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM


# A TCP port on 127.0.0.1 that nothing listens on (and that we have not
# taken), into FREE_PORT. Not to be called in a subshell.

# Waits until `select 1` works as app through HOST:PORT, while PID is alive.
wait_ready() {
  local port=$1 pid=$2 name=$3 i
  for ((i = 0; i < 60; i++)); do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    if PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=3 timeout 10 \
      psql -X -q -h "$HOST" -p "$port" -U "$APP_USER" -d "$APP_DB" -Atc 'select 1' >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  log "$name did not accept logins on port $port within 30 s"
  return 1
}


# utime+stime+cutime+cstime of the postmaster plus utime+stime of its live
# children: all CPU used so far by the cluster.
pg_tree_ticks() {
  local pm=$1 total=0 line f child
  read -r line 2>/dev/null <"/proc/$pm/stat" || {
    printf -v "$2" '%s' 0
    return 0
  }
  read -r -a f <<<"${line##*) }"
  total=$((f[11] + f[12] + f[13] + f[14]))
  for child in $(pgrep -P "$pm"); do
    if read -r line 2>/dev/null <"/proc/$child/stat"; then
      read -r -a f <<<"${line##*) }"
      total=$((total + f[11] + f[12]))
    fi
  done
  printf -v "$2" '%s' "$total"
}

# The shell's reaped children's CPU (pgbench ends up here), fields 16+17.
self_child_ticks() {
  local line f
  read -r line <"/proc/$$/stat"
  read -r -a f <<<"${line##*) }"
  printf -v "$1" '%s' "$((f[13] + f[14]))"
}

# Busy (user+nice+system: time charged to processes; irq/softirq, where
# loopback networking is accounted, and steal are left out) and total jiffies
# of the whole machine, from /proc/stat.
machine_ticks() {
  local _ user nice system idle iowait irq softirq steal rest
  read -r _ user nice system idle iowait irq softirq steal rest </proc/stat
  printf -v "$1" '%s' "$((user + nice + system))"
  printf -v "$2" '%s' "$((user + nice + system + idle + iowait + irq + softirq + steal))"
}




version_ge() { # version_ge A B: A >= B
  [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$2" ]
}

# ------------------------------------------------------------------- pgtarn --

NOTES=()

want_target() { [[ " $TARGETS " == *" $1 "* ]]; }

PGTARN_VERSION="(not run)"
if want_target pgtarn; then
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    commit+="-dirty"
  fi
  if [ -n "${PGTARN_BIN:-}" ]; then
    [ -x "$PGTARN_BIN" ] || die "PGTARN_BIN=$PGTARN_BIN is not an executable"
    BUILT_BIN=$PGTARN_BIN
    PGTARN_VERSION="$PGTARN_BIN (PGTARN_BIN; tree at $commit)"
  elif [ -n "${PGTARN_REF:-}" ]; then
    command -v cargo >/dev/null || die "cargo not found (or set PGTARN_BIN)"
    ref_commit=$(git -C "$ROOT" rev-parse --verify --short "${PGTARN_REF}^{commit}" 2>/dev/null) ||
      die "PGTARN_REF=$PGTARN_REF is not a commit"
    src_dir=$ROOT/target/bench-src
    log "building pgtarn at $PGTARN_REF ($ref_commit) in $src_dir (up to ${BUILD_TIMEOUT}s)"
    rm -rf -- "$src_dir"
    mkdir -p "$src_dir"
    # --touch: fresh mtimes, so cargo never takes another ref's files as built.
    git -C "$ROOT" archive --format=tar "$ref_commit" | tar -x --touch -C "$src_dir" ||
      die "git archive $ref_commit failed"
    CARGO_TARGET_DIR=$ROOT/target/bench-ref run_bounded "$BUILD_TIMEOUT" - \
      cargo build --release --bin pgtarn --manifest-path "$src_dir/Cargo.toml" ||
      die "cargo build --release of $PGTARN_REF failed"
    BUILT_BIN=$ROOT/target/bench-ref/release/pgtarn
    PGTARN_VERSION="$ref_commit (PGTARN_REF=$PGTARN_REF, cargo build --release of the committed tree)"
  else
    command -v cargo >/dev/null || die "cargo not found (or set PGTARN_BIN)"
    log "building pgtarn: cargo build --release (up to ${BUILD_TIMEOUT}s)"
    run_bounded "$BUILD_TIMEOUT" - cargo build --release --bin pgtarn --manifest-path "$ROOT/Cargo.toml" ||
      die "cargo build --release failed"
    BUILT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/pgtarn"
    [ -x "$BUILT_BIN" ] || die "no binary at $BUILT_BIN after the build"
    PGTARN_VERSION="$commit (cargo build --release of the working tree)"
    if [[ $commit == *-dirty ]]; then
      NOTES+=("pgtarn was built from a working tree with uncommitted changes in src/ or Cargo files; \`PGTARN_REF=HEAD\` builds the committed tree instead.")
    fi
  fi
fi

# --------------------------------------------------------------- PostgreSQL --

find_pg_bin

TMP=$(mktemp -d /tmp/pgtarn-bench.XXXXXX)
chmod 700 "$TMP"
[ "$(id -u)" -eq 0 ] && chown postgres: "$TMP"
PG_DATA=$TMP/data

if want_target pgtarn; then
  cp "$BUILT_BIN" "$TMP/pgtarn" # a private copy: other builds may replace the original meanwhile
  PGTARN_BIN_RUN=$TMP/pgtarn
fi

# Self-signed P-256 certificates (valid one day) for 127.0.0.1, one per
# TLS server (PostgreSQL, PgBouncer, pgtarn), for tls50.
gen_cert() {
  local name=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/$name.key" -out "$TMP/$name.crt" >"$TMP/openssl-$name.log" 2>&1 ||
    { cat "$TMP/openssl-$name.log" >&2; die "openssl req failed"; }
  chmod 600 "$TMP/$name.key"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$TMP/$name.key" "$TMP/$name.crt"
  return 0
}
gen_cert postgres
gen_cert pgbouncer
gen_cert pgtarn
[ "$(id -u)" -eq 0 ] && chown root: "$TMP/pgtarn.key" "$TMP/pgtarn.crt"

pg_initdb 'postgres-bench-secret'
as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null <<EOF

# benches/compare.sh
max_connections = 200
ssl = on
ssl_cert_file = '$TMP/postgres.crt'
ssl_key_file = '$TMP/postgres.key'
EOF
as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<EOF
local all all trust
host all $TRUST_USER $HOST/32 trust
host all all $HOST/32 scram-sha-256
EOF

PGPORT_DIRECT=""
for try in 1 2 3; do
  free_port
  port=$FREE_PORT
  log "starting postgres on $HOST:$port (try $try)"
  PG_STARTED=1
  if as_pg timeout 120 "$PG_BIN/pg_ctl" start -D "$PG_DATA" -w -t 60 -l "$TMP/postgres.log" \
    -o "-p $port" >/dev/null 2>&1; then
    PGPORT_DIRECT=$port
    break
  fi
  as_pg timeout 60 "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 30 >/dev/null 2>&1 || true
  PG_STARTED=0
done
[ -n "$PGPORT_DIRECT" ] || die "postgres did not start (see above)"
PG_PM_PID=$(head -1 "$PG_DATA/postmaster.pid")

su_psql() { timeout 600 psql -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PGPORT_DIRECT" -U postgres -d "$@"; }
su_psql postgres -c "create role $APP_USER login password '$APP_PASSWORD'" \
  -c "create database $APP_DB owner $APP_USER" >&2 || die "could not create role/database"
VERIFIER=$(su_psql postgres -Atc "select rolpassword from pg_authid where rolname = '$APP_USER'")
[[ $VERIFIER == SCRAM-SHA-256\$* ]] || die "role $APP_USER has no SCRAM verifier (got '${VERIFIER:0:20}...')"
PG_VERSION=$(su_psql postgres -Atc 'show server_version')

log "pgbench -i -s $SCALE (direct)"
PGPASSWORD=$APP_PASSWORD run_bounded 1800 "$TMP/pgbench-init.log" pgbench -i -q -s "$SCALE" -h "$HOST" \
  -p "$PGPORT_DIRECT" -U "$APP_USER" "$APP_DB" ||
  { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }
su_psql postgres -c "create role $TRUST_USER login password 'tapp-secret'" >&2 || die "could not create role $TRUST_USER"
su_psql "$APP_DB" -c "grant select on pgbench_accounts, pgbench_branches, pgbench_tellers to $TRUST_USER" >&2 ||
  die "could not grant to $TRUST_USER"

# ---------------------------------------------------------------- PgBouncer --

PGB_VERSION="(not run)"
PGB_PORT=""
if want_target pgbouncer; then
  PGB=${PGBOUNCER_BIN:-$(command -v pgbouncer || true)}
  [ -z "$PGB" ] && [ -x /usr/sbin/pgbouncer ] && PGB=/usr/sbin/pgbouncer
  if [ -z "$PGB" ] || [ ! -x "$PGB" ]; then
    log "PgBouncer not found${PGBOUNCER_BIN:+ at PGBOUNCER_BIN=$PGBOUNCER_BIN}: skipping the PgBouncer column (Debian: apt-get install -y pgbouncer)"
    NOTES+=("PgBouncer not found${PGBOUNCER_BIN:+ at PGBOUNCER_BIN=$PGBOUNCER_BIN}: its column is skipped (Debian: \`apt-get install -y pgbouncer\`).")
    TARGETS=${TARGETS//pgbouncer/}
  else
    PGB_VERSION=$("$PGB" --version 2>/dev/null | head -1 | awk '{print $2}')
    if [ "$PGB_AUTH" = plain ]; then
      printf '"%s" "%s"\n' "$APP_USER" "$APP_PASSWORD" >"$TMP/userlist.txt"
    else
      printf '"%s" "%s"\n' "$APP_USER" "$VERIFIER" >"$TMP/userlist.txt"
    fi
    printf '"%s" "%s"\n' "$TRUST_USER" "tapp-secret" >>"$TMP/userlist.txt"
    cat >"$TMP/pgbouncer_hba.conf" <<EOF
host $TRUST_DB $TRUST_USER $HOST/32 trust
host all all $HOST/32 scram-sha-256
EOF
    prepared_line="; max_prepared_statements: not supported by PgBouncer $PGB_VERSION (needs 1.21+)"
    if version_ge "$PGB_VERSION" 1.21; then
      prepared_line="max_prepared_statements = 200"
    elif [[ " $CASES " == *" prepared50 "* ]]; then
      NOTES+=("PgBouncer $PGB_VERSION predates max_prepared_statements (1.21): named prepared statements (prepared50) are expected to fail through it in transaction mode.")
    fi
    for try in 1 2 3; do
      free_port
      PGB_PORT=$FREE_PORT
      cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
$APP_DB = host=$HOST port=$PGPORT_DIRECT dbname=$APP_DB
$TRUST_DB = host=$HOST port=$PGPORT_DIRECT dbname=$APP_DB

[pgbouncer]
listen_addr = $HOST
listen_port = $PGB_PORT
unix_socket_dir =
; scram-sha-256, except trust for $TRUST_USER@$TRUST_DB (connect_trust)
auth_type = hba
auth_hba_file = $TMP/pgbouncer_hba.conf
auth_file = $TMP/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = $((IDLE_CONNS + 2000))
client_tls_sslmode = allow
client_tls_cert_file = $TMP/pgbouncer.crt
client_tls_key_file = $TMP/pgbouncer.key
; plain TCP to Postgres (the default is "disable" before 1.20, "prefer" after)
server_tls_sslmode = disable
logfile = $TMP/pgbouncer.log
; pgtarn logs no connections at RUST_LOG=warn; do the same here
log_connections = 0
log_disconnections = 0
$prepared_line
EOF
      [ "$(id -u)" -eq 0 ] && chown postgres: "$TMP/pgbouncer.ini" "$TMP/userlist.txt" "$TMP/pgbouncer_hba.conf"
      log "starting PgBouncer $PGB_VERSION on $HOST:$PGB_PORT (try $try)"
      if [ "$(id -u)" -eq 0 ]; then
        "$PGB" -u postgres "$TMP/pgbouncer.ini" >>"$TMP/pgbouncer.stderr" 2>&1 &
      else
        "$PGB" "$TMP/pgbouncer.ini" >>"$TMP/pgbouncer.stderr" 2>&1 &
      fi
      PGB_PID=$!
      if wait_ready "$PGB_PORT" "$PGB_PID" PgBouncer; then
        break
      fi
      stop_pid "$PGB_PID" pgbouncer
      PGB_PID=""
    done
    if [ -z "$PGB_PID" ]; then
      cat "$TMP/pgbouncer.stderr" "$TMP/pgbouncer.log" >&2 2>/dev/null || true
      die "PgBouncer did not start"
    fi
  fi
fi

# ------------------------------------------------------------ pgtarn server --

PGT_PORT=""
if want_target pgtarn; then
  for try in 1 2 3; do
    free_port
    PGT_PORT=$FREE_PORT
    cat >"$TMP/pgtarn.toml" <<EOF
[pgtarn]
listen_addr = "$HOST:$PGT_PORT"
max_client_conn = $((IDLE_CONNS + 2000))

[databases.$APP_DB]
host = "$HOST"
port = $PGPORT_DIRECT
pool_mode = "transaction"
pool_size = $POOL_SIZE

[databases.$TRUST_DB]
host = "$HOST"
port = $PGPORT_DIRECT
dbname = "$APP_DB"
pool_mode = "transaction"
pool_size = $POOL_SIZE
auth_type = "trust"

[users.$APP_USER]
password = "$APP_PASSWORD"

[users.$TRUST_USER]
password = "tapp-secret"

[tls.client]
mode = "allow"
cert = "$TMP/pgtarn.crt"
key = "$TMP/pgtarn.key"

# Plain TCP to Postgres, as for PgBouncer (pgtarn's default "prefer" would
# use TLS there, since this Postgres offers it).
[tls.server]
mode = "disable"
EOF
    timeout 30 "$PGTARN_BIN_RUN" --check-config "$TMP/pgtarn.toml" >&2 ||
      die "pgtarn --check-config rejected $TMP/pgtarn.toml"
    log "starting pgtarn on $HOST:$PGT_PORT (try $try)"
    RUST_LOG=warn "$PGTARN_BIN_RUN" --config "$TMP/pgtarn.toml" >>"$TMP/pgtarn.log" 2>&1 &
    PGT_PID=$!
    if wait_ready "$PGT_PORT" "$PGT_PID" pgtarn; then
      break
    fi
    stop_pid "$PGT_PID" pgtarn
    PGT_PID=""
  done
  if [ -z "$PGT_PID" ]; then
    cat "$TMP/pgtarn.log" >&2 || true
    die "pgtarn did not start"
  fi
fi

# ------------------------------------------------------------------- runs --

CLK_TCK=$(getconf CLK_TCK)
declare -A TPS=() LAT=() P50=() P99=() CPU=() FAILS=() ERRS=() OUTSIDE=() LOAD_BEFORE=()
RAW_ROWS=()
PROBLEMS=()

port_of() {
  case $1 in
    direct) echo "$PGPORT_DIRECT" ;;
    pgbouncer) echo "$PGB_PORT" ;;
    pgtarn) echo "$PGT_PORT" ;;
  esac
}
pid_of() {
  case $1 in
    pgbouncer) echo "$PGB_PID" ;;
    pgtarn) echo "$PGT_PID" ;;
    *) echo "" ;;
  esac
}

# One pgbench run; appends to the per-(case, target) lists.
# Prints the median p50 latency of CASE per target and what each pooler
# adds over direct, with NOTE saying how to read it.
added_latency() {
  local case=$1 note=$2 p0 p1 p2
  [[ " $CASES " == *" $case "* ]] || return 0
  p0=$(med "${P50[$case|direct]:-}")
  p1=$(med "${P50[$case|pgbouncer]:-}")
  p2=$(med "${P50[$case|pgtarn]:-}")
  [ -n "$p0" ] || return 0
  echo
  echo "Median (p50) latency at \`${CASE_ARGS[$case]}\` ($note): direct ${p0} ms, PgBouncer ${p1:--} ms, pgtarn ${p2:--} ms; added over direct: PgBouncer $(added_us "$p1" "$p0") µs, pgtarn $(added_us "$p2" "$p0") µs."
}

# (A - B) in µs for A and B in ms, or "-" without A.
added_us() {
  awk -v a="$1" -v b="$2" 'BEGIN{ if (a != "") printf "%.0f", (a - b) * 1000; else printf "-" }'
}

run_one() {
  local case=$1 target=$2 rep=$3 vacuum=$4
  local port pid key="$1|$2" out="$TMP/run-$1-$2-$3.log" rc=0
  local cpu0="" cpu1="" tree0 tree1 self0 self1 busy0 busy1 tot0 tot1 bg0=0 bg1=0 p t
  local -a args
  local user=$APP_USER db=$APP_DB sslmode=${CASE_SSL[$case]:-disable} lat_prefix="$TMP/lat-$1-$2-$3"
  port=$(port_of "$target")
  pid=$(pid_of "$target")
  read -r -a args <<<"${CASE_ARGS[$case]}"
  if [ -n "${CASE_TRUST[$case]:-}" ]; then
    user=$TRUST_USER
    [ "$target" = direct ] || db=$TRUST_DB
    vacuum=0 # tapp may not vacuum or truncate
  fi
  [ "$vacuum" = 1 ] || args+=(-n)
  args+=(--log "--sampling-rate=$SAMPLE" "--log-prefix=$lat_prefix")

  local nchildren
  nchildren=$(pgrep -c -P "$PG_PM_PID" || true)
  [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && {
    PROBLEMS+=("$case / $target rep $rep: the $target process (pid $pid) is gone")
    FAILS[$key]=$((${FAILS[$key]:-0} + 1))
    RAW_ROWS+=("| $case | $target | $rep | FAIL | | | | | | |")
    return 0
  }
  if [ -n "$pid" ]; then proc_ticks "$pid" cpu0 || true; fi
  for p in $PGB_PID $PGT_PID; do proc_ticks "$p" t && bg0=$((bg0 + t)); done
  pg_tree_ticks "$PG_PM_PID" tree0
  self_child_ticks self0
  machine_ticks busy0 tot0

  PGSSLMODE=$sslmode PGPASSWORD=$APP_PASSWORD run_bounded $((DURATION + 180)) "$out" pgbench -h "$HOST" -p "$port" \
    -U "$user" -j "$JOBS" -T "$DURATION" "${args[@]}" "$db" || rc=$?
  if [ "$target" = direct ]; then
    # Let pgbench's backends exit and be reaped into the postmaster's cutime
    # before sampling (a backend exiting mid-sample would be lost).
    for ((t = 0; t < 100; t++)); do
      [ "$(pgrep -c -P "$PG_PM_PID" || true)" -le "$nchildren" ] && break
      sleep 0.1
    done
  fi

  machine_ticks busy1 tot1
  self_child_ticks self1
  pg_tree_ticks "$PG_PM_PID" tree1
  for p in $PGB_PID $PGT_PID; do proc_ticks "$p" t && bg1=$((bg1 + t)); done
  if [ -n "$pid" ]; then proc_ticks "$pid" cpu1 || true; fi

  local tps lat lag tx failed errors outside cpu_us="" p50="" p99=""
  # Per-transaction latencies (µs, field 3) of all threads' sampled logs;
  # with -R a 7th field is the schedule lag, which field 3 includes.
  read -r p50 p99 < <(cat "$lat_prefix".* 2>/dev/null | awk '{print (NF >= 7) ? $3 - $7 : $3}' | sort -n |
    awk '{a[NR]=$1} END{ if (NR) { i50=int(0.5*NR); if (i50<1) i50=1; i99=int(0.99*NR); if (i99<1) i99=1; printf "%.3f %.3f\n", a[i50]/1000, a[i99]/1000 } else print "" }') || true
  rm -f -- "$lat_prefix".*
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -1)
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$out" | head -1)
  lag=$(sed -n 's/^rate limit schedule lag: avg \([0-9.]*\) .*/\1/p' "$out" | head -1)
  if [ -n "$lat" ] && [ -n "$lag" ]; then
    lat=$(awk -v l="$lat" -v g="$lag" 'BEGIN{ printf "%.3f", l - g }')
  fi
  tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -1)
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -1)
  outside=$(awk -v b=$((busy1 - busy0)) -v t=$((tot1 - tot0)) \
    -v o=$((tree1 - tree0 + self1 - self0 + bg1 - bg0)) \
    'BEGIN{ v = (t > 0) ? 100 * (b - o) / t : 0; if (v < 0) v = 0; printf "%.0f", v }')
  OUTSIDE[$key]+="$outside "

  errors=$(grep -E 'aborted|ERROR|FATAL|error|could not|timeout|Killed' "$out" | grep -v '^number of failed' || true)
  if [ "$rc" -ne 0 ] || [ -z "$tps" ] || [ -z "$tx" ] || [ "${failed:-0}" != 0 ] || [ -n "$errors" ]; then
    FAILS[$key]=$((${FAILS[$key]:-0} + 1))
    local first distinct count
    first=$(printf '%s\n' "$errors" | grep -v '^$' | head -1 || true)
    [ -n "$first" ] || first=$(tail -n 3 "$out" | tr '\n' ' ')
    distinct=$(printf '%s\n' "$errors" | grep -v '^$' | sed -E 's/client [0-9]+/client N/g' | sort | uniq -c |
      sort -rn | head -3 | sed -E 's/^ *([0-9]+) (.*)/\2 (x\1)/' | paste -sd ';' - || true)
    count=$(printf '%s\n' "$errors" | grep -vc '^$' || true)
    ERRS[$key]="${ERRS[$key]:-}exit $rc, ${tx:-0} tx: \`$first\`"
    [ "${count:-0}" -gt 1 ] && ERRS[$key]+=" - $count error lines: \`${distinct}\`"
    ERRS[$key]+=$'\n'
    RAW_ROWS+=("| $case | $target | $rep | FAIL (exit $rc${tps:+, tps $(fmt 0 "$tps")}) | ${tx:-} | ${lat:-} | | | | $outside |")
    log "  $case $target rep $rep: FAILED (exit $rc): $first"
    return 0
  fi

  if [ -n "$pid" ] && [ -n "$cpu0" ] && [ -n "$cpu1" ] && [ "$tx" -gt 0 ]; then
    cpu_us=$(awk -v d=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="$tx" 'BEGIN{ printf "%.3f", d * 1e6 / hz / n }')
    CPU[$key]+="$cpu_us "
  fi
  TPS[$key]+="$tps "
  LAT[$key]+="$lat "
  [ -n "$p50" ] && P50[$key]+="$p50 "
  [ -n "$p99" ] && P99[$key]+="$p99 "
  RAW_ROWS+=("| $case | $target | $rep | $(fmt 0 "$tps") | $tx | $lat | ${p50:-} | ${p99:-} | ${cpu_us:+$(fmt 1 "$cpu_us")} | $outside |")
  log "  $case $target rep $rep: tps=$(fmt 0 "$tps") lat=${lat}ms p50=${p50:-?}ms p99=${p99:-?}ms${cpu_us:+ cpu=$(fmt 1 "$cpu_us")us/tx} outside=${outside}%"
}

# VmRSS / VmHWM of PID in KiB, into the variables named $2 and $3.
proc_mem() {
  local rss hwm
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null)
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null)
  printf -v "$2" '%s' "$rss"
  printf -v "$3" '%s' "$hwm"
}

# idle10k: IDLE_CONNS trust logins held open against one pooler; records
# its memory before and with them.
declare -A IDLE=()
run_idle() {
  local target=$1 port pid out="$TMP/idle-$1.log" i ready="" rss0 rss1 hwm1 t0 t1 secs
  port=$(port_of "$target")
  pid=$(pid_of "$target")
  proc_mem "$pid" rss0 _
  t0=$EPOCHREALTIME
  : >"$out"
  python3 "$ROOT/benches/idle_clients.py" "$HOST" "$port" "$TRUST_USER" "$TRUST_DB" "$IDLE_CONNS" >"$out" 2>&1 &
  IDLE_PID=$!
  for ((i = 0; i < 3000; i++)); do
    ready=$(sed -n 's/^ready \([0-9]*\)$/\1/p' "$out" 2>/dev/null || true)
    [ -n "$ready" ] && break
    kill -0 "$IDLE_PID" 2>/dev/null || break
    sleep 0.1
  done
  t1=$EPOCHREALTIME
  sleep 2 # let the pooler settle
  proc_mem "$pid" rss1 hwm1
  stop_pid "$IDLE_PID" "idle clients"
  IDLE_PID=""
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{ printf "%.1f", b - a }')
  if [ "${ready:-0}" != "$IDLE_CONNS" ]; then
    PROBLEMS+=("idle10k via $target: only ${ready:-0}/$IDLE_CONNS clients logged in: \`$(grep -v '^ready' "$out" | head -1 | cut -c1-300)\`")
  fi
  IDLE[$target]="${ready:-0}|$rss0|$rss1|$hwm1|$secs"
  log "  idle10k $target: ${ready:-0} clients in ${secs}s, VmRSS ${rss0} KiB -> ${rss1} KiB, VmHWM ${hwm1} KiB"
  sleep 3 # let the pooler close them
}

for case in $CASES; do
  LOAD_BEFORE[$case]=$(cut -d' ' -f1-3 /proc/loadavg)
  if [ "$case" = idle10k ]; then
    log "case idle10k: $IDLE_CONNS idle trust logins per pooler"
    for target in pgbouncer pgtarn; do
      want_target "$target" && run_idle "$target"
    done
    continue
  fi
  log "case $case: pgbench ${CASE_ARGS[$case]} -j $JOBS -T $DURATION${CASE_SSL[$case]:+ sslmode=${CASE_SSL[$case]}} (load ${LOAD_BEFORE[$case]})"
  first=1
  for ((rep = 1; rep <= REPS; rep++)); do
    for target in direct pgbouncer pgtarn; do
      want_target "$target" || continue
      run_one "$case" "$target" "$rep" "$first"
      first=0
    done
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# The poolers' server connections are still open: check that both reach
# Postgres the same way (plain TCP), so that the comparison is fair.
UPSTREAM_TLS=$(su_psql postgres -Atc "select count(*) filter (where s.ssl) || ' of ' || count(*)
  from pg_stat_activity a join pg_stat_ssl s using (pid)
  where a.usename in ('$APP_USER', '$TRUST_USER') and a.pid <> pg_backend_pid()" 2>/dev/null || echo "?")
case $UPSTREAM_TLS in
  0\ of\ * | \?) ;;
  *) PROBLEMS+=("$UPSTREAM_TLS pooler server connections use TLS to Postgres (both poolers should use plain TCP)") ;;
esac

for name in pgbouncer pgtarn; do
  pid=$(pid_of "$name")
  if want_target "$name" && [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
    PROBLEMS+=("$name exited during the benchmark (see its log)")
  fi
done
if want_target pgtarn && [ -s "$TMP/pgtarn.log" ]; then
  n=$(wc -l <"$TMP/pgtarn.log")
  PROBLEMS+=("pgtarn wrote $n line(s) to stderr at RUST_LOG=warn (writing them costs pgtarn CPU and throughput); first: \`$(head -1 "$TMP/pgtarn.log" | cut -c1-300)\`")
fi
if want_target pgbouncer && [ -s "$TMP/pgbouncer.log" ]; then
  n=$(grep -cE 'WARNING|ERROR|FATAL' "$TMP/pgbouncer.log" || true)
  if [ "${n:-0}" -gt 0 ]; then
    PROBLEMS+=("PgBouncer logged $n warning/error line(s); first: \`$(grep -m1 -E 'WARNING|ERROR|FATAL' "$TMP/pgbouncer.log" | cut -c1-300)\`")
  fi
fi

# ----------------------------------------------------------------- report --

cell_tps() { # median TPS of case|target, or FAIL / n/a
  local key=$1 target=${1#*|} m vals fails
  want_target "$target" || {
    echo "n/a"
    return
  }
  vals=${TPS[$key]:-}
  fails=${FAILS[$key]:-0}
  if [ -z "$vals" ]; then
    echo "FAIL"
    return
  fi
  # shellcheck disable=SC2086
  m=$(median $vals)
  if [ "$fails" -gt 0 ]; then
    echo "$(fmt 0 "$m") ($fails/$REPS failed)"
  else
    fmt 0 "$m"
  fi
}
med() { # median of a list variable's value, may be empty
  # shellcheck disable=SC2086
  if [ -n "${1:-}" ]; then median $1; fi
}

CPU_MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
MEM=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
PGBENCH_VERSION=$(pgbench --version | awk '{print $3}')
ELAPSED=$(awk -v a="$START_EPOCH" -v b="$EPOCHREALTIME" 'BEGIN{ printf "%.0f", b - a }')

report() {
  echo "## pgbench: direct vs PgBouncer vs pgtarn"
  echo
  echo "- date: $START_DATE; whole run took ${ELAPSED} s (including build and setup)"
  echo "- machine: $(nproc) CPU ($CPU_MODEL), $MEM, Linux $(uname -r)"
  echo "- load average (1/5/15 min): at start $LOAD_START; at end $LOAD_END (the end value includes this benchmark's own load)"
  echo "- PostgreSQL $PG_VERSION (fsync=off, max_connections=200, SCRAM); pgbench $PGBENCH_VERSION"
  echo "- PgBouncer: $PGB_VERSION; pgtarn: $PGTARN_VERSION"
  echo "- settings: DURATION=${DURATION}s REPS=$REPS SCALE=$SCALE POOL_SIZE=$POOL_SIZE -j $JOBS, pool_mode=transaction, max_client_conn=$((IDLE_CONNS + 2000)); TPS and latency are medians over REPS; runs alternate direct, pgbouncer, pgtarn; p50/p99 from pgbench --log --sampling-rate=$SAMPLE"
  echo "- poolers to Postgres: plain TCP (pgtarn \`[tls.server] mode = \"disable\"\`, PgBouncer \`server_tls_sslmode = disable\`); server connections over TLS at the end of the run: $UPSTREAM_TLS"
  echo "- command: \`$COMMAND\`"
  echo
  echo "| case | direct TPS | PgBouncer TPS | pgtarn TPS | pgtarn/PgBouncer | pgtarn/direct | pgtarn µs CPU/tx | PgBouncer µs CPU/tx | mean latency ms (direct / PgBouncer / pgtarn) | p99 latency ms (direct / PgBouncer / pgtarn) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
  local case d b t md mb mt ld lb lt pd pb pt
  for case in $CASES; do
    [ "$case" = idle10k ] && continue
    d=$(cell_tps "$case|direct")
    if [ "$case" = select1000 ] && [ -z "${TPS[$case|direct]:-}" ] && want_target direct; then
      d="cannot connect²"
    fi
    b=$(cell_tps "$case|pgbouncer")
    t=$(cell_tps "$case|pgtarn")
    md=$(med "${TPS[$case|direct]:-}")
    mb=$(med "${TPS[$case|pgbouncer]:-}")
    mt=$(med "${TPS[$case|pgtarn]:-}")
    ld=$(fmt 3 "$(med "${LAT[$case|direct]:-}")")
    lb=$(fmt 3 "$(med "${LAT[$case|pgbouncer]:-}")")
    lt=$(fmt 3 "$(med "${LAT[$case|pgtarn]:-}")")
    pd=$(fmt 3 "$(med "${P99[$case|direct]:-}")")
    pb=$(fmt 3 "$(med "${P99[$case|pgbouncer]:-}")")
    pt=$(fmt 3 "$(med "${P99[$case|pgtarn]:-}")")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s / %s / %s | %s / %s / %s |\n' \
      "$case \`${CASE_ARGS[$case]}\`${CASE_SSL[$case]:+ TLS}" "$d" "$b" "$t" \
      "$(ratio "$mt" "$mb")" "$(ratio "$mt" "$md")" \
      "$(fmt 1 "$(med "${CPU[$case|pgtarn]:-}")")" "$(fmt 1 "$(med "${CPU[$case|pgbouncer]:-}")")" \
      "${ld:--}" "${lb:--}" "${lt:--}" "${pd:--}" "${pb:--}" "${pt:--}"
  done
  echo
  echo "Ratios compare medians. A failed run is left out of the medians and counted as failed; FAIL means every run failed."
  echo "µs CPU/tx: pooler process utime+stime (all threads) per transaction processed, including the clients' logins."
  echo "connect_*: one new login per transaction (pgbench -C), so TPS = logins/s."
  if [[ " $CASES " == *" latency10 "* ]]; then
    echo "latency10: pgbench -R $RATE paces the clients, so TPS is the rate; its latencies (mean, p50, p99) leave out the schedule lag."
  fi
  if [[ " $CASES " == *" select1000 "* ]] && want_target direct; then
    echo "² PostgreSQL runs with max_connections = 200: 1,000 direct clients cannot connect (\`remaining connection slots are reserved ...\`): reported as failed."
  fi
  added_latency select10 "closed loop, the machine saturated: each client's latency is about 10 / TPS"
  added_latency latency10 "rate-limited to $RATE tx/s in all, schedule lag left out: the latency the hop adds"
  if [ ${#IDLE[@]} -gt 0 ]; then
    echo
    echo "Memory with $IDLE_CONNS idle logged-in clients (trust logins held open by benches/idle_clients.py; VmRSS before, with them, and peak VmHWM):"
    echo
    echo "| pooler | clients logged in | login time s | VmRSS before MiB | VmRSS with clients MiB | VmHWM MiB |"
    echo "|---|---:|---:|---:|---:|---:|"
    local name n r0 r1 h1 sec
    for name in pgbouncer pgtarn; do
      [ -n "${IDLE[$name]:-}" ] || continue
      IFS='|' read -r n r0 r1 h1 sec <<<"${IDLE[$name]}"
      printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$n" "$sec" \
        "$(awk -v k="$r0" 'BEGIN{ printf "%.1f", k / 1024 }')" "$(awk -v k="$r1" 'BEGIN{ printf "%.1f", k / 1024 }')" \
        "$(awk -v k="$h1" 'BEGIN{ printf "%.1f", k / 1024 }')"
    done
  fi
  echo
  echo "### Noise"
  echo
  echo "outside CPU %: share of the whole machine's CPU used during a run by processes other than PostgreSQL, the poolers and pgbench (e.g. other builds); median / max over the case's runs."
  echo
  echo "| case | load avg before case | outside CPU % (median / max) |"
  echo "|---|---|---|"
  local all v
  for case in $CASES; do
    [ "$case" = idle10k ] && continue
    all=""
    for target in direct pgbouncer pgtarn; do all+="${OUTSIDE[$case|$target]:-}"; done
    # shellcheck disable=SC2086
    v=$(printf '%s\n' $all | sort -g | tail -1)
    echo "| $case | ${LOAD_BEFORE[$case]} | $(fmt 0 "$(med "$all")") / ${v:-} |"
  done
  if [ ${#NOTES[@]} -gt 0 ] || [ ${#PROBLEMS[@]} -gt 0 ] || [ ${#ERRS[@]} -gt 0 ]; then
    echo
    echo "### Notes and problems"
    echo
    local n key
    for n in "${NOTES[@]}"; do echo "- $n"; done
    for n in "${PROBLEMS[@]}"; do echo "- $n"; done
    for case in $CASES; do
      for target in direct pgbouncer pgtarn; do
        key="$case|$target"
        [ -n "${ERRS[$key]:-}" ] || continue
        echo "- $case via $target: ${FAILS[$key]}/$REPS run(s) failed:"
        while IFS= read -r n; do [ -n "$n" ] && echo "  - $n"; done <<<"${ERRS[$key]}"
      done
    done
  fi
  echo
  echo "### Raw runs"
  echo
  echo "| case | target | rep | TPS | transactions | mean latency ms | p50 ms | p99 ms | pooler µs CPU/tx | outside CPU % |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${RAW_ROWS[@]}"
}

REPORT=$(report)
printf '%s\n' "$REPORT"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$(dirname "$OUT")"
  printf '%s\n' "$REPORT" >"$OUT"
  log "report written to $OUT"
fi
log "done in ${ELAPSED}s"
