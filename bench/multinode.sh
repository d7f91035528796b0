#!/usr/bin/env bash
# Three Latchkey nodes on one PostgreSQL database, each under wrk verify load: tokens revoked one
# at a time through node A, and the time from each revoke call's return until node B and node C
# first refuse the token (examples/revocation_probe.rs). One table on stdout: p50, p99 and max of
# that propagation time per load level, and the verify rate each node sustained meanwhile.
#
#   bash bench/multinode.sh [--revocations N] [--saturate] [--smoke]
#
#   --revocations N  revocations per load level (default 500; --smoke: 20)
#   --saturate       add the saturated level (see below)
#   --smoke          short, idle and paced only: checks that the script works (CI runs it)
#
# Load levels: idle (no load); paced (wrk -t1 -c8 on each node, every connection waiting 2 ms
# before each request: at most 4,000 requests/s a node); busy (wrk -t1 -c16 on each node, 1 ms
# between requests: at most 16,000 requests/s a node, more than two CPUs give); with --saturate,
# saturated (wrk -t1 -c8 on each node, closed loop: as fast as the machine allows; on two CPUs
# shared with PostgreSQL this starves the database, see docs/performance.md). The nodes run with
# a 300 s cache TTL, so only a notification (LISTEN/NOTIFY) can explain a refusal. The tokens to
# revoke are minted (through A) before each load starts. "503s" counts verify answers the probe
# got while a node could not reach the database in time (retried: an overloaded machine).
# PostgreSQL, the three nodes, the three wrk and the probe share the machine's CPUs.
# Target: p99 <= 100 ms.
#
# The database server: LATCHKEY_TEST_DATABASE_URL (an admin URL; a database is created in it and
# dropped at exit) or, when it is unset and this runs as root, a throwaway cluster on loopback
# started by .ci/postgres.sh, as for bench/postgres.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

REVOCATIONS="" SMOKE=0 SATURATE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --revocations) REVOCATIONS="$2"; shift 2 ;;
    --saturate) SATURATE=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$SMOKE" = 1 ]; then WARMUP=1 REVOCATIONS=${REVOCATIONS:-20} LOAD_TOKENS=100 LEVELS="idle paced"
else WARMUP=3 REVOCATIONS=${REVOCATIONS:-500} LOAD_TOKENS=1000 LEVELS="idle paced busy"; fi
[ "$SATURATE" = 0 ] || LEVELS="$LEVELS saturated"
[[ "$REVOCATIONS" =~ ^[1-9][0-9]*$ ]] || { echo "--revocations must be a positive number" >&2; exit 2; }

log() { echo "[multinode-bench $(date +%H:%M:%S)] $*" >&2; }
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/latchkey-multinode-bench.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bench_database_drop
  rm -rf "$TMP"
}
trap cleanup EXIT
bench_database latchkey_multinode

log "building ($BENCH_PROFILE)"
bench_build

# start_node NAME: starts a node on the shared database; sets PORT_<NAME> and PID_<NAME>.
start_node() {
  local name=$1 port pid
  port=$(free_port)
  LATCHKEY_LOG=warn LATCHKEY_RATE_LIMIT_PER_SECOND=0 LATCHKEY_RATE_LIMIT_MINT_PER_HOUR=0 \
    LATCHKEY_RATE_LIMIT_MINT_PER_TOKEN_PER_HOUR=0 LATCHKEY_RATE_LIMIT_FAILED_VERIFY_PER_MINUTE=0 \
    "$BIN/latchkey" serve --listen "127.0.0.1:$port" --database-url "$URL" --log-format json \
    --hash sha256 --cache-ttl-seconds 300 >"$TMP/$name.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/healthz" "$pid" 30 || { cat "$TMP/$name.log" >&2; exit 1; }
  printf -v "PORT_$name" '%s' "$port"
  printf -v "PID_$name" '%s' "$pid"
}
# A first: it alone bootstraps the empty database.
start_node A
ADMIN=$(grep -a '_pat_' "$TMP/A.log" | grep -v '^{' | head -n1 | tr -d '[:space:]')
[ -n "$ADMIN" ] || { echo "no bootstrap token in node A's stderr" >&2; exit 1; }
start_node B
start_node C
NODES=("$PORT_A" "$PORT_B" "$PORT_C")

log "seeding $LOAD_TOKENS load tokens"
"$BIN/examples/seed" --database-url "$URL" --count "$LOAD_TOKENS" --out "$TMP/load.txt" \
  --method store --concurrency 8 >&2

# wrk_start CONNECTIONS PACE: wrk verify load on every node until wrk_stop (PACE "-": closed loop).
WRK_PIDS=()
wrk_start() {
  local i=0 port
  WRK_PIDS=()
  for port in "${NODES[@]}"; do
    wrk -t1 "-c$1" -d3600s -s bench/wrk.lua "http://127.0.0.1:$port" -- verify "$TMP/load.txt" 1 \
      - - - check "$2" >"$TMP/wrk.$i.out" 2>&1 &
    WRK_PIDS+=("$!"); PIDS+=("$!"); i=$((i + 1))
  done
}
# wrk_stop: stops the load (wrk reports on SIGINT); sets RATES to "rateA/rateB/rateC"; fails on
# errors or invalid answers (the load tokens are never revoked).
wrk_stop() {
  local i j rates=""
  for p in "${WRK_PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${WRK_PIDS[@]}"; do wait "$p" || true; done
  for i in 0 1 2; do
    j=$(sed -n 's/^WRKJSON //p' "$TMP/wrk.$i.out")
    [ -n "$j" ] || { echo "wrk printed no result:" >&2; cat "$TMP/wrk.$i.out" >&2; return 1; }
    if [ "$(num status_errors "$j")" != 0 ] || [ "$(num socket_errors "$j")" != 0 ] ||
      [ "$(num invalid "$j")" != 0 ]; then
      echo "failed load on node $i: $j" >&2; return 1
    fi
    rates="$rates${rates:+/}$(printf '%.0f' "$(num rps "$j")")"
  done
  RATES=$rates
}

printf '%-11s %21s %6s %8s %8s %8s %16s %5s\n' load "verify req/s A/B/C" revoked "p50 ms" "p99 ms" \
  "max ms" "revoke call p99" 503s
VERDICTS=""
PROBE=("$BIN/examples/revocation_probe" --revoke-url "http://127.0.0.1:$PORT_A" --admin-token "$ADMIN")
for level in $LEVELS; do
  # The tokens to revoke are minted before the load starts: what is measured is revocation.
  "${PROBE[@]}" --count "$REVOCATIONS" --out "$TMP/probe.$level.txt"
  RATES="-"
  case "$level" in
    paced) wrk_start 8 2 ;;
    busy) wrk_start 16 1 ;;
    saturated) wrk_start 8 - ;;
  esac
  [ "$level" = idle ] || sleep "$WARMUP"
  log "$level: $REVOCATIONS revocations through A, watched on B and C"
  status=0
  out=$("${PROBE[@]}" --tokens "$TMP/probe.$level.txt" --watch-url "http://127.0.0.1:$PORT_B" \
    --watch-url "http://127.0.0.1:$PORT_C" --limit-ms 5000) || status=$?
  [ "$level" = idle ] || wrk_stop
  log "$level: $out"
  if [ "$status" != 0 ]; then
    echo "revocation_probe failed ($level): $out" >&2
    for n in A B C; do echo "--- node $n, last lines:" >&2; tail -n 20 "$TMP/$n.log" >&2; done
    exit 1
  fi
  printf '%-11s %21s %6s %8.1f %8.1f %8.1f %13.1f ms %5s\n' "$level" "$RATES" \
    "$(num revocations "$out")" "$(num p50_ms "$out")" "$(num p99_ms "$out")" "$(num max_ms "$out")" \
    "$(num revoke_call_p99_ms "$out")" "$(num unavailable "$out")"
  if [ "$level" != idle ]; then
    p99=$(num p99_ms "$out") verdict="met"
    awk -v p="$p99" 'BEGIN { exit !(p > 100) }' && verdict="NOT met"
    VERDICTS="$VERDICTS${VERDICTS:+; }$level: $verdict (p99 $p99 ms)"
  fi
done
echo "target p99 <= 100 ms under load: $VERDICTS"
echo "propagation = from the revoke call's return to the first refusal, polled back to back on" \
  "each other node; $(nproc) CPUs shared by PostgreSQL, three nodes, three wrk and the probe"
