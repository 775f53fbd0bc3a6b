#!/usr/bin/env bash
# Helpers shared by the benchmark scripts (sourced, not run). The caller
# defines `log`, `die` and `HOST`, and reads CHILD_PID / FREE_PORT.
# shellcheck disable=SC2034  # CHILD_PID, FREE_PORT are read by the caller

CHILD_PID="" # the foreground job (build, pgbench), run in the background so signals are handled at once
TAKEN_PORTS=" "
FREE_PORT=""

# Runs a command as the postgres OS user when we are root, else as ourselves.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Stops one process by PID: TERM, up to 10 s, then KILL.
stop_pid() {
  local pid=$1 name=$2 i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) ignored TERM; killing"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# run_bounded SECS OUTFILE CMD...: runs CMD in the background under
# `timeout SECS`, stdout and stderr to OUTFILE ("-": our stderr), and waits
# for it, so a signal reaches our trap at once (the function itself must not
# be redirected: the trap would inherit that). Returns CMD's exit status.
run_bounded() {
  local secs=$1 out=$2 rc=0
  shift 2
  if [ "$out" = - ]; then
    timeout --kill-after=10 "$secs" "$@" >&2 &
  else
    timeout --kill-after=10 "$secs" "$@" >"$out" 2>&1 &
  fi
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

free_port() {
  local p i lo=32768 span
  # Below the ephemeral range: a port that was a client socket's local
  # port stays unbindable while that socket is in TIME_WAIT (for 60 s), so
  # after the idle10k case's 10,000 connections most ephemeral ports
  # could not be bound by a listener started right after.
  read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  span=$((lo - 10000))
  [ "$span" -ge 1000 ] || span=20000
  for ((i = 0; i < 200; i++)); do
    p=$((10000 + RANDOM % span))
    [[ $TAKEN_PORTS == *" $p "* ]] && continue
    if ! timeout 1 bash -c "exec 3<>/dev/tcp/$HOST/$p" 2>/dev/null; then
      TAKEN_PORTS+="$p "
      FREE_PORT=$p
      return 0
    fi
  done
  die "no free port found"
}

# utime+stime (fields 14, 15) of PID, in clock ticks, into the variable named $2.
proc_ticks() {
  local line f
  if ! read -r line 2>/dev/null <"/proc/$1/stat"; then
    printf -v "$2" '%s' ""
    return 1
  fi
  read -r -a f <<<"${line##*) }" # f[0] is field 3
  printf -v "$2" '%s' "$((f[11] + f[12]))"
}

median() {
  [ $# -gt 0 ] || return 0
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{ if (NR%2) v=a[(NR+1)/2]; else v=(a[NR/2]+a[NR/2+1])/2; printf "%.6g\n", v }'
}

fmt() { # fmt DECIMALS VALUE (empty stays empty)
  [ -n "${2:-}" ] || return 0
  awk -v d="$1" -v v="$2" 'BEGIN{ printf "%.*f", d, v }'
}

ratio() { # ratio A B: A/B with 2 decimals, empty if either is missing
  [ -n "${1:-}" ] && [ -n "${2:-}" ] || return 0
  awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b }'
}

# remove_tmp RC LOG...: on failure (RC != 0) shows the last lines of each
# non-empty LOG, then keeps $TMP if KEEP_TMP=1, else removes it.
remove_tmp() {
  local rc=$1 f
  shift
  [ -n "${TMP:-}" ] && [ -d "$TMP" ] || return 0
  if [ "$rc" -ne 0 ]; then
    for f in "$@"; do
      [ -s "$f" ] && { log "last lines of $f:"; tail -n 15 "$f" >&2; }
    done
  fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then
    log "kept $TMP"
  else
    rm -rf -- "$TMP"
  fi
}

# find_pg_bin: the PostgreSQL server binaries (PG_BINDIR, else the newest
# /usr/lib/postgresql/*/bin holding initdb) into PG_BIN; dies if none, or
# if we are root and there is no `postgres` OS user to run them as.
find_pg_bin() {
  if [ -n "${PG_BINDIR:-}" ]; then
    PG_BIN=$PG_BINDIR
  else
    PG_BIN=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
      sort -V | tail -1 | xargs -r dirname)
  fi
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ] || [ ! -x "$PG_BIN/pg_ctl" ]; then
    die "no PostgreSQL server binaries (set PG_BINDIR; Debian: apt-get install -y postgresql)"
  fi
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' OS user"
  fi
}

# pg_initdb SECRET: initdb into $PG_DATA (superuser `postgres` with password
# SECRET; SCRAM over TCP, trust on the Unix socket) and the settings every
# benchmark shares. The caller appends its own settings and pg_hba.conf.
pg_initdb() {
  log "initdb into $PG_DATA ($PG_BIN)"
  printf '%s\n' "$1" >"$TMP/pwfile"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$TMP/pwfile"; fi
  as_pg timeout 300 "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --pwfile="$TMP/pwfile" -E UTF8 \
    --auth-local=trust --auth-host=scram-sha-256 --no-sync >"$TMP/initdb.log" 2>&1 ||
    { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
  as_pg tee -a "$PG_DATA/postgresql.conf" >/dev/null <<CONF

# benches/lib.sh
password_encryption = 'scram-sha-256'
fsync = off
listen_addresses = '$HOST'
unix_socket_directories = '$TMP'
CONF
}
