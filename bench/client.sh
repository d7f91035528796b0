#!/usr/bin/env bash
# Verifying inside your own service (issue 22): the latchkey-client middleware's example service
# (`crates/latchkey-client/examples/protected.rs`) against itself, and how fast a revocation
# reaches it.
#
#   bash bench/client.sh [--smoke] [--pin]
#
#   hello_vs_open       GET /hello (bearer checked by the middleware, answered from its cache) against
#                       GET /open (no check) of the same process, wrk 32 connections, 7 pairs of
#                       rounds (open, then hello); the ratio is the median of the pairs' ratios
#                       (rounds on two shared CPUs drift by several percent over a minute, which a
#                       pair shares), the rates the best of each. Target: /hello >= 0.90x /open.
#   revocation_pushed   100 tokens (smoke: 10), each cached by the service, revoked on Latchkey;
#                       the time from the revoke call's return to the service's first 401
#                       (examples/revocation_delay.rs). Target: p99 <= 100 ms.
#   revocation_no_stream  the same with the service's watch stream down (its watch token
#                       revoked): no cache is used, so a revocation is refused on the next request.
#
# Latchkey runs on a fresh SQLite database; everything on loopback, sharing the machine's CPUs
# (as bench/run.sh, where the targets were set). --pin gives the example service the first half
# of the CPUs and wrk (and Latchkey, which the cached /hello does not reach) the rest, as
# separate machines would. Prints one table on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

SMOKE=0 PIN=0 THREADS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; shift ;;
    --pin) PIN=1; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$SMOKE" = 1 ]; then WARMUP=1 DURATION=2 ROUNDS=1 REVOCATIONS=10
else WARMUP=1 DURATION=5 ROUNDS=7 REVOCATIONS=100; fi

pin_layout "$PIN" bench/client.sh

log() { echo "[client-bench $(date +%H:%M:%S)] $*" >&2; }
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/latchkey-client-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

log "building ($BENCH_PROFILE)"
bench_build

LK_PORT=$(free_port)
LK="http://127.0.0.1:$LK_PORT"
LATCHKEY_LOG=warn "${CLIENT_PIN[@]}" "$BIN/latchkey" serve --listen "127.0.0.1:$LK_PORT" \
  --database-url "sqlite://$TMP/lk.db" --log-format json --rate-limit-per-second 0 \
  --rate-limit-mint-per-hour 0 >"$TMP/lk.log" 2>&1 &
LK_PID=$!; PIDS+=("$LK_PID")
wait_http "$LK/healthz" "$LK_PID" 30 || { cat "$TMP/lk.log" >&2; exit 1; }
ADMIN=$(grep -a '_pat_' "$TMP/lk.log" | grep -v '^{' | head -n1 | tr -d '[:space:]')
[ -n "$ADMIN" ] || { echo "no bootstrap token in the server's stderr" >&2; exit 1; }

mint() { # name scopes-json -> "plaintext id"
  curl -fsS -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d "{\"name\":\"$1\",\"scopes\":$2}" "$LK/v1/tokens" |
    sed -E 's/.*"plaintext":"([^"]+)".*/\1/;t' | head -n1
}
token_id() { # plaintext -> id
  curl -fsS -H 'Content-Type: application/json' -d "{\"token\":\"$1\"}" "$LK/v1/tokens/verify" |
    sed -E 's/.*"token_id":"([^"]+)".*/\1/'
}
WATCH=$(mint watcher '["tokens:watch"]')
CALLER=$(mint caller '[]')
printf '%s\n' "$CALLER" >"$TMP/caller.txt"

start_service() { # watch-token -> SVC (URL), SVC_PID
  "${SERVER_PIN[@]}" "$BIN/examples/protected" --listen 127.0.0.1:0 --latchkey "$LK" --watch-token "$1" \
    >"$TMP/svc.out" 2>"$TMP/svc.err" &
  SVC_PID=$!; PIDS+=("$SVC_PID")
  for _ in $(seq 100); do
    SVC=$(sed -n 's/^listening on /http:\/\//p' "$TMP/svc.out" | head -n1)
    [ -n "$SVC" ] && break
    sleep 0.1
  done
  [ -n "$SVC" ] || { cat "$TMP/svc.err" >&2; echo "the example service did not start" >&2; exit 1; }
  wait_http "$SVC/open" "$SVC_PID" 30
}
start_service "$WATCH"

# measure MODE: prints the WRKJSON object; fails on any non-2xx answer.
measure() {
  local j
  "${CLIENT_PIN[@]}" wrk -t"$THREADS" -c32 -d"${WARMUP}s" -s bench/wrk.lua "$SVC" -- "$1" "$TMP/caller.txt" 2 >/dev/null
  j=$("${CLIENT_PIN[@]}" wrk -t"$THREADS" -c32 -d"${DURATION}s" -s bench/wrk.lua "$SVC" -- "$1" "$TMP/caller.txt" 2 |
    sed -n 's/^WRKJSON //p')
  [ -n "$j" ] || { echo "wrk printed no result" >&2; return 1; }
  if [ "$(num status_errors "$j")" != 0 ] || [ "$(num socket_errors "$j")" != 0 ]; then
    echo "failed run ($1): $j" >&2; return 1
  fi
  echo "$j"
}

printf '%-22s %10s %8s %8s %10s %6s  %s\n' scenario 'req/s' 'p50 ms' 'p99 ms' 'open req/s' ratio target
H="" O="" PAIRS=()
for _ in $(seq "$ROUNDS"); do
  o=$(measure open); h=$(measure hello)
  O=$(best "$O" "$o"); H=$(best "$H" "$h")
  PAIRS+=("$(awk -v a="$(num rps "$h")" -v b="$(num rps "$o")" 'BEGIN { printf "%.4f", a / b }')")
done
ratio=$(printf '%s\n' "${PAIRS[@]}" | sort -n |
  awk '{ r[NR] = $1 } END { printf "%.2f", NR % 2 ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2 }')
log "hello/open of each pair: ${PAIRS[*]}"
met=no; awk -v r="$ratio" 'BEGIN { exit !(r >= 0.90) }' && met=yes
printf '%-22s %10.0f %8.3f %8.3f %10.0f %6s  %s\n' hello_vs_open "$(num rps "$H")" \
  "$(awk -v u="$(num p50_us "$H")" 'BEGIN { print u / 1000 }')" \
  "$(awk -v u="$(num p99_us "$H")" 'BEGIN { print u / 1000 }')" "$(num rps "$O")" "$ratio" \
  ">= 0.90x /open: $met"

revocations() { # name limit-ms target-ms
  local j
  j=$("$BIN/examples/revocation_delay" --latchkey "$LK" --admin "$ADMIN" --service "$SVC" \
    --count "$REVOCATIONS" --limit-ms "$2")
  [ "$(num over_limit "$j")" = 0 ] || { echo "$1: a revocation was not refused within $2 ms: $j" >&2; return 1; }
  met=no; awk -v p="$(num p99_ms "$j")" -v t="$3" 'BEGIN { exit !(p <= t) }' && met=yes
  printf '%-22s %s  p99 <= %s ms: %s\n' "$1" "$j" "$3" "$met"
}
revocations revocation_pushed 5000 100

# The stream down: the service's watch token revoked, so it cannot follow changes and must ask
# Latchkey on every request.
curl -fsS -X DELETE -H "Authorization: Bearer $ADMIN" "$LK/v1/tokens/$(token_id "$WATCH")" >/dev/null
kill "$SVC_PID"; wait "$SVC_PID" 2>/dev/null || true
start_service "$WATCH"
revocations revocation_no_stream 5000 100
echo "$CPU_LAYOUT; wrk -t$THREADS -c32"
log "done"
