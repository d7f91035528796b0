#!/usr/bin/env bash
# Latchkey on PostgreSQL against the no-op baseline: warm REST verify, REST verify cycling through
# every token (cache a tenth of the set), and mint. Same load generator and settings as
# bench/run.sh (wrk, 32 connections, alternating rounds, best kept), one table on stdout. The
# warm verify is also measured, in the same rounds, on a Latchkey with the same flags on SQLite
# (its target is "as on SQLite": the line after it gives PostgreSQL / SQLite). Cycling is also
# measured, in the same rounds, on a second PostgreSQL node that writes no usage during the run
# (`rest_verify_cycling_no_usage`, `--usage-flush-ms` of an hour): not a way to run Latchkey
# (usage is written at least every second), but the ceiling of what a cheaper usage write could
# give.
#
#   bash bench/postgres.sh [--tokens N] [--smoke]
#
#   --tokens N   tokens in the database (default 100,000; --smoke: 1,000)
#   --smoke      1 s warm-up, 2 s per measurement, one round: checks that the script works
#
# The database server: LATCHKEY_TEST_DATABASE_URL (an admin URL; a database is created in it and
# dropped at exit) or, when it is unset and this runs as root, a throwaway cluster on loopback
# started by .ci/postgres.sh (durability off: fsync and synchronous_commit off, so the mint
# figure is what the CPU allows, not what a disk allows). The PostgreSQL server shares the
# machine's CPUs with Latchkey and the load generator.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

TOKENS="" SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tokens) TOKENS="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$SMOKE" = 1 ]; then WARMUP=1 DURATION=2 ROUNDS=1 TOKENS=${TOKENS:-1000}
else WARMUP=3 DURATION=10 ROUNDS=2 TOKENS=${TOKENS:-100000}; fi
[[ "$TOKENS" =~ ^[1-9][0-9]*$ ]] || { echo "--tokens must be a positive number" >&2; exit 2; }

log() { echo "[postgres-bench $(date +%H:%M:%S)] $*" >&2; }
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/latchkey-pg-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bench_database_drop
  rm -rf "$TMP"
}
trap cleanup EXIT
bench_database latchkey_bench

log "building ($BENCH_PROFILE)"
bench_build

LK_PORT=$(free_port); BASE_PORT=$(free_port); SQ_PORT=$(free_port); LK1M_PORT=$(free_port)
CACHE=$(( TOKENS / 10 > 0 ? TOKENS / 10 : 1 ))
FLAGS=(--log-format json --hash sha256 --cache-capacity "$CACHE" --rate-limit-per-second 0
  --rate-limit-mint-per-hour 0 --rate-limit-mint-per-token-per-hour 0 --trusted-proxies 127.0.0.1/32)
LATCHKEY_LOG=warn "$BIN/latchkey" serve --listen "127.0.0.1:$LK_PORT" --database-url "$URL" \
  "${FLAGS[@]}" >"$TMP/lk.log" 2>&1 &
LK_PID=$!; PIDS+=("$LK_PID")
LATCHKEY_LOG=warn "$BIN/latchkey" serve --listen "127.0.0.1:$SQ_PORT" \
  --database-url "sqlite://$TMP/sqlite.db" "${FLAGS[@]}" >"$TMP/sq.log" 2>&1 &
SQ_PID=$!; PIDS+=("$SQ_PID")
"$BIN/examples/baseline" --listen "127.0.0.1:$BASE_PORT" >"$TMP/base.log" 2>&1 &
BASE_PID=$!; PIDS+=("$BASE_PID")
wait_http "http://127.0.0.1:$LK_PORT/healthz" "$LK_PID" 30 || { cat "$TMP/lk.log" >&2; exit 1; }
# The second node starts on the migrated, bootstrapped database (the token is in lk.log).
LATCHKEY_LOG=warn "$BIN/latchkey" serve --listen "127.0.0.1:$LK1M_PORT" --database-url "$URL" \
  "${FLAGS[@]}" --usage-flush-ms 3600000 >"$TMP/lk1m.log" 2>&1 &
LK1M_PID=$!; PIDS+=("$LK1M_PID")
wait_http "http://127.0.0.1:$BASE_PORT/healthz" "$BASE_PID" 30 || { cat "$TMP/base.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$SQ_PORT/healthz" "$SQ_PID" 30 || { cat "$TMP/sq.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$LK1M_PORT/healthz" "$LK1M_PID" 30 || { cat "$TMP/lk1m.log" >&2; exit 1; }
ADMIN=$(grep -a '_pat_' "$TMP/lk.log" | grep -v '^{' | head -n1 | tr -d '[:space:]')
[ -n "$ADMIN" ] || { echo "no bootstrap token in the server's stderr" >&2; exit 1; }
SQ_ADMIN=$(grep -a '_pat_' "$TMP/sq.log" | grep -v '^{' | head -n1 | tr -d '[:space:]')
[ -n "$SQ_ADMIN" ] || { cat "$TMP/sq.log" >&2; echo "no bootstrap token from the SQLite server" >&2; exit 1; }
curl -fsS -H "Authorization: Bearer $SQ_ADMIN" -H 'Content-Type: application/json' \
  -d '{"name":"warm","scopes":[]}' "http://127.0.0.1:$SQ_PORT/v1/tokens" |
  sed -E 's/.*"plaintext":"([^"]+)".*/\1/' >"$TMP/sq_warm.txt"

log "seeding $TOKENS tokens through the store (one transaction per token)"
"$BIN/examples/seed" --database-url "$URL" --count "$TOKENS" --out "$TMP/tokens.txt" \
  --method store --concurrency 16 >&2
head -n1 "$TMP/tokens.txt" >"$TMP/warm.txt"

# measure PORT MODE FILE [BEARER]: prints the WRKJSON object; fails on errors or invalid answers.
measure() {
  local j
  wrk -t2 -c32 -d"${WARMUP}s" -s bench/wrk.lua "http://127.0.0.1:$1" -- "$2" "$3" 2 "${4:--}" >/dev/null
  j=$(wrk -t2 -c32 -d"${DURATION}s" -s bench/wrk.lua "http://127.0.0.1:$1" -- "$2" "$3" 2 "${4:--}" - - check |
    sed -n 's/^WRKJSON //p')
  [ -n "$j" ] || { echo "wrk printed no result" >&2; return 1; }
  if [ "$(num status_errors "$j")" != 0 ] || [ "$(num socket_errors "$j")" != 0 ] ||
    { [ "$1" != "$BASE_PORT" ] && [ "$2" = verify ] && [ "$(num invalid "$j")" != 0 ]; }; then
    echo "failed run on port $1 ($2): $j" >&2; return 1
  fi
  echo "$j"
}

printf '%-24s %9s %8s %8s %10s %6s\n' scenario req/s "p50 ms" "p99 ms" "base req/s" ratio
row() { # name lk-json base-json
  local r="-" b="-"
  if [ -n "$3" ]; then b=$(num rps "$3"); r=$(awk -v a="$(num rps "$2")" -v b="$b" 'BEGIN { printf "%.2f", a / b }'); b=$(printf '%.0f' "$b"); fi
  printf '%-24s %9.0f %8.3f %8.3f %10s %6s\n' "$1" "$(num rps "$2")" \
    "$(awk -v u="$(num p50_us "$2")" 'BEGIN { print u / 1000 }')" \
    "$(awk -v u="$(num p99_us "$2")" 'BEGIN { print u / 1000 }')" "$b" "$r"
}
for scenario in warm cycling; do
  file="$TMP/warm.txt"; [ "$scenario" = cycling ] && file="$TMP/tokens.txt"
  L="" B="" S="" M=""
  for _ in $(seq "$ROUNDS"); do
    B=$(best "$B" "$(measure "$BASE_PORT" verify "$file")")
    L=$(best "$L" "$(measure "$LK_PORT" verify "$file")")
    [ "$scenario" = warm ] && S=$(best "$S" "$(measure "$SQ_PORT" verify "$TMP/sq_warm.txt")")
    [ "$scenario" = cycling ] && M=$(best "$M" "$(measure "$LK1M_PORT" verify "$file")")
  done
  row "rest_verify_$scenario" "$L" "$B"
  [ "$scenario" = cycling ] && row rest_verify_cycling_no_usage "$M" "$B"
  if [ "$scenario" = warm ]; then
    row rest_verify_warm_sqlite "$S" "$B"
    printf '%-24s %6s\n' "warm: postgres/sqlite" \
      "$(awk -v a="$(num rps "$L")" -v b="$(num rps "$S")" 'BEGIN { printf "%.2f", a / b }')"
  fi
done
L=""
for _ in $(seq "$ROUNDS"); do L=$(best "$L" "$(measure "$LK_PORT" mint "$TMP/warm.txt" "$ADMIN")"); done
row mint "$L" ""
echo "latchkey peak RSS: $(rss_mib "$LK_PID") MiB; tokens $TOKENS, cache $CACHE; $(nproc) CPUs shared by PostgreSQL, Latchkey and wrk"
