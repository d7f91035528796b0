# shellcheck shell=bash
# A throwaway PostgreSQL cluster on loopback for the PostgreSQL tests. Sourced (not run) by
# .ci/run, and by developers: `source .ci/postgres.sh && cargo test`.
#
# - Installs Debian's `postgresql` package if no server binaries are present (needs root).
# - Creates a cluster in a temp dir as the `postgres` user, listening on 127.0.0.1:55432 only
#   (LATCHKEY_PG_PORT overrides), with durability off (a test cluster: speed over safety).
# - Asks for a password over TCP, and stores `latchkey`'s as MD5: a SCRAM-SHA-256 login (the
#   default) costs sqlx 4,096 rounds of HMAC-SHA-256 with a yield to the runtime every five, and
#   the tests open thousands of connections: the PostgreSQL suite took 495 s with it against
#   226 s. A role whose password is stored as SCRAM still logs in with SCRAM, which
#   tests/api/postgres_auth.rs does.
# - Creates a superuser role `latchkey` (password `latchkey`) and exports
#   LATCHKEY_TEST_DATABASE_URL, the admin URL the tests create their own databases with.
# - Stops the cluster and removes its folder on exit (appended to any existing EXIT trap).
#
# Idempotent: sourcing it again in the same shell reuses the running cluster; a
# LATCHKEY_TEST_DATABASE_URL that is already set to another server is left alone.

_lk_pg_main() {
  local port="${LATCHKEY_PG_PORT:-55432}"
  local url="postgres://latchkey:latchkey@127.0.0.1:${port}/postgres"

  if [ -n "${LATCHKEY_TEST_DATABASE_URL:-}" ] && [ "${LATCHKEY_TEST_DATABASE_URL}" != "$url" ]; then
    echo "postgres: using LATCHKEY_TEST_DATABASE_URL from the environment"
    return 0
  fi

  if [ "$(id -u)" != 0 ]; then
    echo "postgres: starting a cluster needs root; set LATCHKEY_TEST_DATABASE_URL instead" >&2
    return 1
  fi
  if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "postgres: installing Debian's postgresql package"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  local bin
  bin="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin | sort -V | tail -n 1)"

  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    # Already running: this shell's cluster (sourced twice) or one left behind by a run that was
    # killed. Reuse it if our role logs in; anything else on the port is not ours.
    if PGPASSWORD=latchkey "$bin/psql" -qtA -d "$url" -c 'SELECT 1' >/dev/null 2>&1; then
      export LATCHKEY_TEST_DATABASE_URL="$url"
      echo "postgres: reusing the cluster on 127.0.0.1:$port"
      return 0
    fi
    echo "postgres: port $port is taken by another server; set LATCHKEY_PG_PORT" >&2
    return 1
  fi

  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/latchkey-pg.XXXXXX")"
  chown postgres:postgres "$dir"
  chmod 700 "$dir"
  _lk_pg_as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth-local=peer \
    --auth-host=md5 --no-sync --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; return 1; }
  _lk_pg_as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir \
        -c max_connections=500 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        -c password_encryption=md5" \
    start >/dev/null ||
    { cat "$dir/server.log" >&2; return 1; }

  _LK_PG_DIR="$dir"
  _LK_PG_BIN="$bin"
  _lk_pg_add_exit_trap

  _lk_pg_as_postgres "$bin/psql" -qtA -h "$dir" -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE latchkey LOGIN SUPERUSER PASSWORD 'latchkey'" >/dev/null
  export LATCHKEY_TEST_DATABASE_URL="$url"
  echo "postgres: $("$bin/postgres" --version) on 127.0.0.1:$port (data in $dir)"
}

_lk_pg_as_postgres() {
  if command -v runuser >/dev/null 2>&1; then
    runuser -u postgres -- "$@"
  else
    su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
  fi
}

_lk_pg_stop() {
  if [ -n "${_LK_PG_DIR:-}" ] && [ -d "$_LK_PG_DIR/data" ]; then
    _lk_pg_as_postgres "$_LK_PG_BIN/pg_ctl" -D "$_LK_PG_DIR/data" -m immediate -w stop \
      >/dev/null 2>&1 || true
    rm -rf "$_LK_PG_DIR"
  fi
  _LK_PG_DIR=""
}

# Runs the stop, then whatever EXIT trap was set before this file was sourced.
_lk_pg_add_exit_trap() {
  if [ -n "${_LK_PG_TRAP_SET:-}" ]; then
    return 0
  fi
  _LK_PG_PREVIOUS_EXIT_TRAP=""
  local existing
  existing="$(trap -p EXIT)"
  if [ -n "$existing" ]; then
    # `trap -p` prints `trap -- 'command' EXIT`, quoted for re-use: let the shell unquote it.
    eval "set -- $existing"
    _LK_PG_PREVIOUS_EXIT_TRAP="$3"
  fi
  # shellcheck disable=SC2064
  trap '_lk_pg_stop; eval "${_LK_PG_PREVIOUS_EXIT_TRAP:-}"' EXIT
  _LK_PG_TRAP_SET=1
}

_lk_pg_main
