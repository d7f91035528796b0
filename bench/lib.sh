# shellcheck shell=bash
# Helpers shared by the bench/ scripts (sourced, not run).

free_port() {
  local p
  for _ in $(seq 200); do
    # Below Linux's ephemeral range (32768 and up by default): a port there may be the source
    # port of one of the load generator's connections (or one in TIME_WAIT), which a connect
    # test does not see and which makes the server's bind fail.
    p=$(( 20000 + RANDOM % 12000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  return 1
}

wait_http() { # url pid seconds: until the server answers anything
  local url=$1 pid=$2 secs=$3 code
  for _ in $(seq $(( secs * 10 ))); do
    kill -0 "$pid" 2>/dev/null || return 1
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [ "$code" != "000" ] && [ -n "$code" ] && return 0
    sleep 0.1
  done
  return 1
}

rss_mib() { # pid -> peak resident set (VmHWM) in MiB
  awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo 0
}

num() { # key json -> number
  sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p" <<<"$2" | head -n1
}

best() { # json json -> the one with more requests per second
  if [ -z "$1" ]; then echo "$2"; elif [ -z "$2" ]; then echo "$1";
  elif awk -v a="$(num rps "$1")" -v b="$(num rps "$2")" 'BEGIN { exit !(b > a) }'; then echo "$2";
  else echo "$1"; fi
}

lowest_p99() { # json json -> the one with the lower p99 (the least disturbed run, for p99 targets)
  if [ -z "$1" ]; then echo "$2"; elif [ -z "$2" ]; then echo "$1";
  elif awk -v a="$(num p99_us "$1")" -v b="$(num p99_us "$2")" 'BEGIN { exit !(b < a) }'; then echo "$2";
  else echo "$1"; fi
}

# bench_database NAME: creates the database NAME_<pid> for a benchmark; sets DB, URL (its URL)
# and ADMIN_URL, for psql_admin. The server: LATCHKEY_TEST_DATABASE_URL (an admin URL) or, when
# that is unset and this runs as root, a throwaway cluster on loopback (.ci/postgres.sh). The
# calling script defines `cleanup` (its EXIT trap), which calls bench_database_drop: the
# database is dropped and that cluster stopped after the script's own processes.
bench_database() {
  if [ -z "${LATCHKEY_TEST_DATABASE_URL:-}" ]; then
    # shellcheck source=/dev/null
    source "$ROOT/.ci/postgres.sh" >&2
    BENCH_OWN_CLUSTER=1
    trap cleanup EXIT # .ci/postgres.sh put its stop first; bench_database_drop stops it last
  fi
  ADMIN_URL="$LATCHKEY_TEST_DATABASE_URL"
  PSQL=$(command -v psql || find /usr/lib/postgresql -path '*/bin/psql' | sort -V | tail -n1)
  DB="${1}_$$"
  psql_admin -c "CREATE DATABASE $DB" >/dev/null
  URL="${ADMIN_URL%/*}/$DB"
}
psql_admin() { "$PSQL" -qtA -d "$ADMIN_URL" "$@"; }
bench_database_drop() {
  if [ -n "${DB:-}" ]; then
    psql_admin -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  if [ "${BENCH_OWN_CLUSTER:-0}" = 1 ]; then _lk_pg_stop 2>/dev/null || true; fi
}

# pin_layout PIN SCRIPT: the CPU layout. PIN=0: servers and load generator share every CPU
# (SERVER_PIN and CLIENT_PIN empty, THREADS unchanged). PIN=1: the servers on the first half of
# the CPUs this may use, the load generator on the rest (SERVER_PIN and CLIENT_PIN are taskset
# prefixes; THREADS, the load generator's threads, one per CPU of its half). Sets CPU_LAYOUT to
# a description. Needs taskset and at least 2 CPUs; SCRIPT names the caller in its errors.
pin_layout() {
  SERVER_PIN=()
  CLIENT_PIN=()
  CPU_LAYOUT="servers and load generator share every CPU"
  [ "$1" = 1 ] || return 0
  local part list="" half cpus server client
  for part in $(awk '/^Cpus_allowed_list:/ { gsub(",", " ", $2); print $2 }' /proc/self/status); do
    case "$part" in
      *-*) list="$list $(seq -s ' ' "${part%-*}" "${part#*-}")" ;;
      *) list="$list $part" ;;
    esac
  done
  read -r -a cpus <<<"$list"
  [ ${#cpus[@]} -ge 2 ] || { echo "$2: --pin needs at least 2 CPUs" >&2; exit 2; }
  command -v taskset >/dev/null 2>&1 || { echo "$2: --pin needs taskset (util-linux)" >&2; exit 2; }
  half=$(( ${#cpus[@]} / 2 ))
  server=$(tr ' ' , <<<"${cpus[*]:0:$half}")
  client=$(tr ' ' , <<<"${cpus[*]:$half}")
  SERVER_PIN=(taskset -c "$server")
  CLIENT_PIN=(taskset -c "$client")
  THREADS=$(( ${#cpus[@]} - half ))
  CPU_LAYOUT="servers on CPU $server, load generator on CPU $client"
}

# The cargo profile the scripts build and run: `release` by default, the only one whose figures
# mean anything. LATCHKEY_BENCH_PROFILE=dev runs the debug build instead, which CI's smoke runs
# do: they check that a script works, not how fast, and `cargo test` has just built it, where a
# release build of the whole tree took 13 minutes of CI on a slow machine.
BENCH_PROFILE=${LATCHKEY_BENCH_PROFILE:-release}
case "$BENCH_PROFILE" in
  release) BENCH_PROFILE_DIR=release ;;
  dev) BENCH_PROFILE_DIR=debug ;;
  *) echo "LATCHKEY_BENCH_PROFILE must be release or dev, not $BENCH_PROFILE" >&2; exit 2 ;;
esac

# Builds the binaries and the examples in $BENCH_PROFILE; BIN is then the folder they are in.
bench_build() {
  cargo build --profile "$BENCH_PROFILE" --quiet --bins --examples
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$BENCH_PROFILE_DIR"
}
