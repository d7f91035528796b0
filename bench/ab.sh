#!/usr/bin/env bash
# A/B of two builds of the latchkey server on the cycling scenario of bench/run.sh: every token
# of the database verified in turn over REST, the cache a tenth of the set, so most
# verifications are cache misses and every flush writes usage for thousands of tokens. Use it to
# price a change to the verify or usage path (the hourly usage counts were priced with it).
#
#   bash bench/ab.sh OLD_DIR NEW_DIR [--tokens N] [--rounds R] [--duration S] [--scenario S]
#
# --scenario cycling (the default, above); warm: one token verified over and over, the cache
# holding every token (the hot path of a cache hit); or mint: tokens created over REST with the
# bootstrap token of a fresh database per round, the mint limits off (as in bench/run.sh's mint
# scenario).
#
# OLD_DIR and NEW_DIR each hold a `latchkey` binary; OLD_DIR also an `examples/seed` or `seed`
# binary of the same build (the database is seeded once, with the older schema, and each server
# migrates its own copy). Rounds alternate old and new; the best round of each side is reported
# with the ratio new/old. Needs wrk and curl. Servers listen on 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

[ $# -ge 2 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
OLD=$1 NEW=$2
shift 2
TOKENS=100000 ROUNDS=3 DURATION=10 WARMUP=3 CONNS=32 THREADS=2 SCENARIO=cycling
while [ $# -gt 0 ]; do
  case "$1" in
    --tokens) TOKENS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --scenario) SCENARIO=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
SEED="$OLD/examples/seed"
[ -x "$SEED" ] || SEED="$OLD/seed"
for b in "$OLD/latchkey" "$NEW/latchkey" "$SEED"; do
  [ -x "$b" ] || { echo "missing $b" >&2; exit 2; }
done
command -v wrk >/dev/null || { echo "needs wrk" >&2; exit 2; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/latchkey-ab.XXXXXX")
PID=""
cleanup() {
  [ -z "$PID" ] || { kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  rm -rf "$TMP"
}
trap cleanup EXIT

[ "$SCENARIO" = mint ] && TOKENS=10
"$SEED" --database-url "sqlite://$TMP/seed.db" --count "$TOKENS" --hash sha256 \
  --out "$TMP/tokens.txt" --method sql >"$TMP/seed.out" 2>&1 ||
  { cat "$TMP/seed.out" >&2; exit 1; }
# The seed may have left pages in its write-ahead log, which a copy of the main file alone loses.
if command -v sqlite3 >/dev/null; then
  sqlite3 "$TMP/seed.db" "PRAGMA wal_checkpoint(TRUNCATE);" >/dev/null
else
  for f in "$TMP"/seed.db-wal "$TMP"/seed.db-shm; do
    [ -e "$f" ] && { cp "$f" "$TMP/old.db${f#"$TMP"/seed.db}"; cp "$f" "$TMP/new.db${f#"$TMP"/seed.db}"; }
  done
fi
cp "$TMP/seed.db" "$TMP/old.db"
cp "$TMP/seed.db" "$TMP/new.db"
CACHE=$(( TOKENS / 10 ))
if [ "$SCENARIO" = warm ]; then CACHE=$TOKENS; fi
head -n1 "$TMP/tokens.txt" >"$TMP/warm.txt"

run_side() { # name -> JSON of one measurement
  local name=$1 bin port url db mode=verify file="$TMP/tokens.txt" bearer=-
  if [ "$name" = old ]; then bin="$OLD/latchkey"; else bin="$NEW/latchkey"; fi
  port=$(free_port)
  url="http://127.0.0.1:$port"
  db="$TMP/$name.db"
  if [ "$SCENARIO" = mint ]; then
    db="$TMP/$name-mint-$RANDOM.db"
    mode=mint file=-
  elif [ "$SCENARIO" = warm ]; then
    file="$TMP/warm.txt"
  fi
  LATCHKEY_LOG=warn "$bin" serve --database-url "sqlite://$db" --hash sha256 \
    --cache-capacity "$CACHE" --rate-limit-mint-per-hour 0 \
    --rate-limit-mint-per-token-per-hour 0 --rate-limit-per-second 0 \
    --listen "127.0.0.1:$port" >"$TMP/$name.log" 2>&1 &
  PID=$!
  wait_http "$url/healthz" "$PID" 60 || { cat "$TMP/$name.log" >&2; exit 1; }
  if [ "$SCENARIO" = mint ]; then
    bearer=$(grep -a '_pat_' "$TMP/$name.log" | grep -v '^{' | head -n1 | tr -d '[:space:]')
  fi
  wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" --timeout 10s -s "$ROOT/bench/wrk.lua" "$url" -- \
    "$mode" "$file" "$THREADS" "$bearer" "$$-$RANDOM" - - - >/dev/null
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 10s -s "$ROOT/bench/wrk.lua" "$url" -- \
    "$mode" "$file" "$THREADS" "$bearer" "$$-$RANDOM" - - - >"$TMP/wrk.out"
  kill -TERM "$PID"
  wait "$PID" 2>/dev/null || true
  PID=""
  sed -n 's/^WRKJSON //p' "$TMP/wrk.out" | head -n1
}

BEST_OLD="" BEST_NEW=""
for r in $(seq "$ROUNDS"); do
  o=$(run_side old)
  n=$(run_side new)
  printf 'round %d: old %s req/s (p99 %s us), new %s req/s (p99 %s us)\n' "$r" \
    "$(num rps "$o")" "$(num p99_us "$o")" "$(num rps "$n")" "$(num p99_us "$n")"
  BEST_OLD=$(best "$BEST_OLD" "$o")
  BEST_NEW=$(best "$BEST_NEW" "$n")
done
awk -v o="$(num rps "$BEST_OLD")" -v n="$(num rps "$BEST_NEW")" \
  'BEGIN { printf "best: old %.0f req/s, new %.0f req/s, new/old %.3f\n", o, n, n / o }'
