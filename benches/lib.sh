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
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 40000))
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
