#!/usr/bin/env bash
# benches/tls.sh: pgbench over TLS, directly against PostgreSQL and through
# pgtarn, in one run on this machine.
#
# It builds pgtarn (release), generates throwaway self-signed certificates
# with openssl (one for PostgreSQL, one for pgtarn; valid for localhost and
# 127.0.0.1), starts a throwaway PostgreSQL with `ssl = on` whose pg_hba.conf
# only accepts `hostssl` over TCP (so no run can silently fall back to
# plaintext), initialises pgbench tables, and starts pgtarn in transaction
# mode with
#
#     [tls.client] mode = "require"   (clients must use TLS)
#     [tls.server] mode = "require"   (pgtarn -> PostgreSQL over TLS)
#
# Then it checks that both hops really are TLS (psql \conninfo through pgtarn,
# pg_stat_ssl on the upstream backend) and runs, alternating direct / pgtarn:
#
#   connect   pgbench -C -S -c 10 -j JOBS -T DURATION_CONNECT, sslmode=require:
#             a new connection (TLS handshake + SCRAM login) per transaction.
#             Direct, every connection also forks a backend; through pgtarn
#             the upstream connections are pooled (TLS once per server).
#   steady    pgbench -S -c 50 -j JOBS -T DURATION_STEADY, sslmode=require:
#             long-lived TLS connections, select-only.
#
# and prints a Markdown table of TPS (median over REPS), pgtarn/direct ratio
# and pgtarn's CPU per transaction. Every process it starts (PostgreSQL,
# pgtarn, pgbench) is stopped by PID on exit, also on Ctrl-C or TERM, and the
# temp dir is removed. All traffic stays on 127.0.0.1.
#
# Usage:
#   benches/tls.sh                                  # 5 s connect, 10 s steady
#   DURATION=3 benches/tls.sh                       # both phases 3 s
#   DURATION_CONNECT=5 DURATION_STEADY=10 REPS=3 KEY=rsa benches/tls.sh
#
# Environment knobs (defaults in brackets):
#   DURATION          sets both durations below, in seconds          [unset]
#   DURATION_CONNECT  -T of the connect case                         [5]
#   DURATION_STEADY   -T of the steady case                          [10]
#   REPS              runs per case and target; medians are reported [1]
#   JOBS              pgbench worker threads (-j)                    [2]
#   SCALE             pgbench -i scale factor                        [10]
#   POOL_SIZE         pgtarn pool_size                               [20]
#   KEY               certificate key type: ec (P-256) or rsa (2048) [ec]
#   PGTARN_BIN        use this pgtarn binary instead of `cargo build --release`
#   PG_BINDIR         PostgreSQL server binaries [newest /usr/lib/postgresql/*/bin]
#   KEEP_TMP=1        keep the temp dir (logs, configs, certificates)
#
# Needs: bash 4+, openssl, pgbench and psql on PATH, PostgreSQL server
# binaries, coreutils timeout; when run as root, the `postgres` OS user.
# Progress goes to stderr, the report to stdout.

set -euo pipefail

if [ -n "${DURATION:-}" ]; then
  DURATION_CONNECT=${DURATION_CONNECT:-$DURATION}
  DURATION_STEADY=${DURATION_STEADY:-$DURATION}
fi
DURATION_CONNECT=${DURATION_CONNECT:-5}
DURATION_STEADY=${DURATION_STEADY:-10}
REPS=${REPS:-1}
JOBS=${JOBS:-2}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-20}
KEY=${KEY:-ec}
KEEP_TMP=${KEEP_TMP:-0}

APP_USER=app
APP_PASSWORD=app-secret
APP_DB=app
HOST=127.0.0.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
cd / # commands run as the postgres user must never lack a cwd
# Every libpq client below uses TLS; nothing may read ~/.postgresql or a
# service file.
export PGSSLMODE=require PGGSSENCMODE=disable PGSSLCERT=/nonexistent PGSSLKEY=/nonexistent
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS PGPASSFILE

log() { printf '[tls-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

for knob in DURATION_CONNECT DURATION_STEADY REPS JOBS SCALE POOL_SIZE; do
  [[ ${!knob} =~ ^[1-9][0-9]*$ ]] || die "$knob must be a positive integer (got '${!knob}')"
done
case $KEY in ec | rsa) ;; *) die "KEY must be ec or rsa (got '$KEY')" ;; esac
for tool in openssl pgbench psql timeout; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH"
done

# ---------------------------------------------------------------- processes --

TMP=""
PG_BIN=""
PG_DATA=""
PG_PM_PID=""
PGT_PID=""



cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  stop_pid "$CHILD_PID" child
  stop_pid "$PGT_PID" pgtarn
  if [ -z "$PG_PM_PID" ] && [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    PG_PM_PID=$(head -1 "$PG_DATA/postmaster.pid")
  fi
  if [ -n "$PG_PM_PID" ]; then
    # SIGINT = fast shutdown; stop_pid escalates to KILL after 10 s. The
    # postmaster is not our child (pg_ctl started it), so poll for its exit.
    kill -INT "$PG_PM_PID" 2>/dev/null
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 "$PG_PM_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$PG_PM_PID" 2>/dev/null; then
      log "postgres (pid $PG_PM_PID) still running; killing"
      kill -KILL "$PG_PM_PID" 2>/dev/null
    fi
  fi
  remove_tmp "$rc" "$TMP"/postgres.log "$TMP"/pgtarn.log
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM


# A port on 127.0.0.1 nobody listens on, into FREE_PORT.

# psql as app over TLS to HOST:PORT; extra args follow.
app_psql() {
  local port=$1
  shift
  PGPASSWORD=$APP_PASSWORD PGCONNECT_TIMEOUT=5 timeout 20 \
    psql -X -q -h "$HOST" -p "$port" -U "$APP_USER" -d "$APP_DB" "$@"
}

# Waits (30 s) until `select 1` works through PORT while PID is alive.
wait_ready() {
  local port=$1 pid=$2 name=$3 i
  for ((i = 0; i < 60; i++)); do
    [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null && return 1
    app_psql "$port" -Atc 'select 1' >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "$name did not accept TLS logins on port $port within 30 s"
  return 1
}



# ------------------------------------------------------------------- pgtarn --

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null)" ]; then
  commit+="-dirty"
fi
if [ -n "${PGTARN_BIN:-}" ]; then
  [ -x "$PGTARN_BIN" ] || die "PGTARN_BIN=$PGTARN_BIN is not executable"
  BUILT_BIN=$PGTARN_BIN
  PGTARN_VERSION="$PGTARN_BIN (tree at $commit)"
else
  command -v cargo >/dev/null || die "cargo not found (or set PGTARN_BIN)"
  log "building pgtarn: cargo build --release"
  run_bounded 1800 - cargo build --release --bin pgtarn --manifest-path "$ROOT/Cargo.toml" ||
    die "cargo build --release failed"
  BUILT_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/pgtarn"
  PGTARN_VERSION="$commit (cargo build --release of the working tree)"
fi

# --------------------------------------------------------------- PostgreSQL --

find_pg_bin

TMP=$(mktemp -d /tmp/pgtarn-tls-bench.XXXXXX)
chmod 700 "$TMP"
[ "$(id -u)" -eq 0 ] && chown postgres: "$TMP"
PG_DATA=$TMP/data
cp "$BUILT_BIN" "$TMP/pgtarn" # a private copy: other builds may replace the original

# Self-signed certificates (valid one day) for localhost and 127.0.0.1.
gen_cert() {
  local name=$1 keyopt
  if [ "$KEY" = ec ]; then
    keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
  else
    keyopt=(-newkey rsa:2048)
  fi
  openssl req -x509 "${keyopt[@]}" -nodes -days 1 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/$name.key" -out "$TMP/$name.crt" >"$TMP/openssl-$name.log" 2>&1 ||
    { cat "$TMP/openssl-$name.log" >&2; die "openssl req failed"; }
  chmod 600 "$TMP/$name.key"
}
log "generating $KEY certificates with openssl"
gen_cert postgres
gen_cert pgtarn
[ "$(id -u)" -eq 0 ] && chown postgres: "$TMP/postgres.key" "$TMP/postgres.crt"

pg_initdb 'postgres-bench-secret'
as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null <<EOF

# benches/tls.sh
max_connections = 200
ssl = on
ssl_cert_file = '$TMP/postgres.crt'
ssl_key_file = '$TMP/postgres.key'
EOF
# TCP logins only over TLS: a plaintext connection matches no line.
as_pg tee "$PG_DATA/pg_hba.conf" >/dev/null <<EOF
local all all trust
hostssl all all $HOST/32 scram-sha-256
EOF

PG_PORT=""
for try in 1 2 3; do
  free_port
  log "starting postgres on $HOST:$FREE_PORT (try $try)"
  if as_pg timeout 120 "$PG_BIN/pg_ctl" start -D "$PG_DATA" -w -t 60 -l "$TMP/postgres.log" \
    -o "-p $FREE_PORT" >/dev/null 2>&1; then
    PG_PORT=$FREE_PORT
    PG_PM_PID=$(head -1 "$PG_DATA/postmaster.pid")
    break
  fi
  if [ -f "$PG_DATA/postmaster.pid" ]; then
    PG_PM_PID=$(head -1 "$PG_DATA/postmaster.pid")
    kill -KILL "$PG_PM_PID" 2>/dev/null || true
    PG_PM_PID=""
  fi
done
[ -n "$PG_PORT" ] || die "postgres did not start"

su_psql() { PGSSLMODE=disable timeout 120 psql -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PG_PORT" -U postgres -d postgres "$@"; }
su_psql -c "create role $APP_USER login password '$APP_PASSWORD'" \
  -c "create database $APP_DB owner $APP_USER" >&2 || die "could not create role/database"
PG_VERSION=$(su_psql -Atc 'show server_version')

log "pgbench -i -s $SCALE (direct, TLS)"
PGPASSWORD=$APP_PASSWORD run_bounded 1800 "$TMP/pgbench-init.log" pgbench -i -q -s "$SCALE" \
  -h "$HOST" -p "$PG_PORT" -U "$APP_USER" "$APP_DB" ||
  { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# ------------------------------------------------------------------- pgtarn --

PGT_PORT=""
for try in 1 2 3; do
  free_port
  PGT_PORT=$FREE_PORT
  cat >"$TMP/pgtarn.toml" <<EOF
[pgtarn]
listen_addr = "$HOST:$PGT_PORT"
max_client_conn = 2000

[databases.$APP_DB]
host = "$HOST"
port = $PG_PORT
pool_mode = "transaction"
pool_size = $POOL_SIZE

[users.$APP_USER]
password = "$APP_PASSWORD"

[tls.client]
mode = "require"
cert = "$TMP/pgtarn.crt"
key = "$TMP/pgtarn.key"

[tls.server]
mode = "require"
EOF
  timeout 30 "$TMP/pgtarn" --check-config "$TMP/pgtarn.toml" >&2 || die "pgtarn --check-config failed"
  log "starting pgtarn on $HOST:$PGT_PORT (try $try)"
  RUST_LOG=warn "$TMP/pgtarn" --config "$TMP/pgtarn.toml" >>"$TMP/pgtarn.log" 2>&1 &
  PGT_PID=$!
  wait_ready "$PGT_PORT" "$PGT_PID" pgtarn && break
  stop_pid "$PGT_PID" pgtarn
  PGT_PID=""
done
[ -n "$PGT_PID" ] || die "pgtarn did not start"

# Both hops must be TLS: the client's (\conninfo) and pgtarn's upstream one
# (pg_stat_ssl of the backend that runs the query).
conninfo=$(app_psql "$PGT_PORT" -c '\conninfo' 2>&1) || die "psql through pgtarn failed: $conninfo"
[[ $conninfo == *"SSL connection (protocol: "* ]] || die "client -> pgtarn is not TLS: $conninfo"
upstream=$(app_psql "$PGT_PORT" -Atc 'select ssl, version from pg_stat_ssl where pid = pg_backend_pid()' 2>&1) ||
  die "pg_stat_ssl through pgtarn failed: $upstream"
[[ $upstream == t\|* ]] || die "pgtarn -> postgres is not TLS: $upstream"
direct=$(app_psql "$PG_PORT" -Atc 'select ssl, version from pg_stat_ssl where pid = pg_backend_pid()' 2>&1) ||
  die "direct TLS login failed: $direct"
CLIENT_PROTO=$(sed -n 's/.*SSL connection (protocol: \([^,]*\),.*/\1/p' <<<"$conninfo")
log "TLS checked: client->pgtarn $CLIENT_PROTO, pgtarn->postgres ${upstream#t|}, direct ${direct#t|}"

# -------------------------------------------------------------------- runs --

declare -A ARGS=(
  [connect]="-C -S -c 10"
  [steady]="-S -c 50"
)
declare -A DUR=(
  [connect]=$DURATION_CONNECT
  [steady]=$DURATION_STEADY
)
CASES="connect steady"
declare -A TPS=() CPU=() FAILS=()
CLK_TCK=$(getconf CLK_TCK)

run_one() {
  local case=$1 target=$2 rep=$3 port out="$TMP/run-$1-$2-$3.log" rc=0 c0="" c1="" tps tx failed
  local -a args
  read -r -a args <<<"${ARGS[$case]}"
  [ "$target" = direct ] && port=$PG_PORT || port=$PGT_PORT
  [ "$target" = pgtarn ] && { proc_ticks "$PGT_PID" c0 || true; }
  PGPASSWORD=$APP_PASSWORD run_bounded $((DUR[$case] + 120)) "$out" pgbench -n -h "$HOST" -p "$port" \
    -U "$APP_USER" -j "$JOBS" -T "${DUR[$case]}" "${args[@]}" "$APP_DB" || rc=$?
  [ "$target" = pgtarn ] && { proc_ticks "$PGT_PID" c1 || true; }
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -1)
  tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -1)
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -1)
  if [ "$rc" -ne 0 ] || [ -z "$tps" ] || [ "${failed:-0}" != 0 ] || grep -qE 'aborted|FATAL|ERROR' "$out"; then
    FAILS[$case|$target]=$((${FAILS[$case|$target]:-0} + 1))
    log "  $case $target rep $rep: FAILED (exit $rc): $(grep -m1 -E 'aborted|FATAL|ERROR|error' "$out" || tail -n 2 "$out" | tr '\n' ' ')"
    return 0
  fi
  TPS[$case|$target]+="$tps "
  if [ -n "$c0" ] && [ -n "$c1" ] && [ "${tx:-0}" -gt 0 ]; then
    CPU[$case|$target]+="$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$tx" 'BEGIN{ printf "%.3f", d * 1e6 / hz / n }') "
  fi
  log "  $case $target rep $rep: tps=$(fmt 0 "$tps") ($tx transactions)"
}

for case in $CASES; do
  log "case $case: pgbench ${ARGS[$case]} -j $JOBS -T ${DUR[$case]} (sslmode=require)"
  for ((rep = 1; rep <= REPS; rep++)); do
    for target in direct pgtarn; do run_one "$case" "$target" "$rep"; done
  done
done
kill -0 "$PGT_PID" 2>/dev/null || die "pgtarn exited during the benchmark"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------ report --

cell() { # median TPS of case|target, with failures noted
  local vals=${TPS[$1]:-} fails=${FAILS[$1]:-0} m
  if [ -z "$vals" ]; then
    echo FAIL
    return
  fi
  # shellcheck disable=SC2086
  m=$(median $vals)
  if [ "$fails" -gt 0 ]; then echo "$(fmt 0 "$m") ($fails/$REPS failed)"; else fmt 0 "$m"; fi
}

echo "## pgbench over TLS: direct vs pgtarn"
echo
echo "- $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPU ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)); load average at start $LOAD_START, at end $LOAD_END (includes this benchmark)"
echo "- PostgreSQL $PG_VERSION (fsync=off, ssl=on, hostssl-only pg_hba, SCRAM); pgbench $(pgbench --version | awk '{print $3}'); pgtarn $PGTARN_VERSION"
echo "- TLS: $KEY self-signed certificates (openssl); client->pgtarn $CLIENT_PROTO, pgtarn->postgres ${upstream#t|}, client->postgres ${direct#t|}; pgtarn \`[tls.client] mode=\"require\"\`, \`[tls.server] mode=\"require\"\`, transaction pooling, pool_size=$POOL_SIZE"
echo "- REPS=$REPS (median TPS), -j $JOBS, sslmode=require on every client connection"
echo
echo "| case | pgbench | direct TPS | pgtarn TPS | pgtarn/direct | pgtarn µs CPU/tx |"
echo "|---|---|---:|---:|---:|---:|"
for case in $CASES; do
  md=""
  mt=""
  # shellcheck disable=SC2086
  [ -n "${TPS[$case|direct]:-}" ] && md=$(median ${TPS[$case|direct]})
  # shellcheck disable=SC2086
  [ -n "${TPS[$case|pgtarn]:-}" ] && mt=$(median ${TPS[$case|pgtarn]})
  cpu=""
  # shellcheck disable=SC2086
  [ -n "${CPU[$case|pgtarn]:-}" ] && cpu=$(fmt 1 "$(median ${CPU[$case|pgtarn]})")
  # shellcheck disable=SC2016 # the backticks are Markdown
  printf '| %s | `%s -j %s -T %s` | %s | %s | %s | %s |\n' "$case" "${ARGS[$case]}" "$JOBS" "${DUR[$case]}" \
    "$(cell "$case|direct")" "$(cell "$case|pgtarn")" "$(ratio "$mt" "$md")" "$cpu"
done
echo
echo "connect: every transaction opens a new TLS connection and logs in with SCRAM (pgbench -C); TPS = logins+queries per second."
echo "µs CPU/tx: pgtarn process utime+stime per transaction, including client TLS handshakes and SCRAM."
if [ -s "$TMP/pgtarn.log" ]; then
  echo
  echo "pgtarn logged $(wc -l <"$TMP/pgtarn.log") line(s) at RUST_LOG=warn; first: \`$(head -1 "$TMP/pgtarn.log" | cut -c1-300)\`"
fi
log "done"
