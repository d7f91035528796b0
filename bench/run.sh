#!/usr/bin/env bash
# Latchkey's benchmark suite: Latchkey against a baseline server that runs the same HTTP and gRPC
# stack and does no work (examples/baseline.rs), with the same load generator and settings,
# alternating, scenario by scenario. The warm REST verify and the gateway check are also measured
# against a bare axum server (examples/bare.rs: `axum::serve`, no dispatch, no tonic, no bounds),
# which counts Latchkey's serving plumbing as its cost too.
#
#   bash bench/run.sh            # the full run: 100,000 and 1,000,000 tokens, ~15 min
#   bash bench/run.sh --smoke    # CI: 1,000 tokens, 2 s per measurement, one round, ~2 min
#
# Options:
#   --tokens N          tokens in the database (default 100000; smoke 1000)
#   --large-tokens N    tokens for the large-database scenario (default 1000000; smoke: --tokens)
#   --skip-large        leave out the large-database scenario
#   --duration S        seconds per measurement (default 10; smoke 2)
#   --warmup S          seconds of warm-up before each measurement (default 3; smoke 1)
#   --rounds R          measurements per side, alternating baseline and Latchkey; the best of
#                       each side is reported (default 2; smoke 1)
#   --connections C     concurrent connections (default 32)
#   --pin               servers on the first half of the CPUs, the load generator on the rest
#                       (by default all of them share every CPU)
#   --no-callgrind      leave out the instruction count
#   --enforce           exit 3 when a target is missed (targets are reported, not enforced,
#                       by default)
#   --keep              keep the temporary folder (databases, logs, token files)
#
# Needs wrk, curl and valgrind (installed with apt-get when missing and running as root).
# Builds with `cargo build --release` into $CARGO_TARGET_DIR (default target/); LATCHKEY_BENCH_PROFILE=dev
# runs the debug build instead (CI smoke runs: see bench/lib.sh). Servers listen on
# 127.0.0.1 only. Before each measurement it waits (up to 60 s; 5 s in smoke mode) for the
# machine to be quiet, so that a compiler running meanwhile does not end up in the figures.
# Prints one table and writes the same as JSON to bench/results/latest.json.
# Exit status: 0 when every scenario ran, 1 when one could not run (or its answers were wrong),
# 2 for bad usage, 3 with --enforce when a target was missed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

SMOKE=0
TOKENS=""
LARGE_TOKENS=""
SKIP_LARGE=0
DURATION=""
WARMUP=""
ROUNDS=""
CONNS=32
THREADS=2
PIN=0
CALLGRIND=1
ENFORCE=0
KEEP=0

ARGS="$*"
usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --tokens) TOKENS=${2:?--tokens needs a value}; shift ;;
    --large-tokens) LARGE_TOKENS=${2:?--large-tokens needs a value}; shift ;;
    --skip-large) SKIP_LARGE=1 ;;
    --duration) DURATION=${2:?--duration needs a value}; shift ;;
    --warmup) WARMUP=${2:?--warmup needs a value}; shift ;;
    --rounds) ROUNDS=${2:?--rounds needs a value}; shift ;;
    --connections) CONNS=${2:?--connections needs a value}; shift ;;
    --pin) PIN=1 ;;
    --no-callgrind) CALLGRIND=0 ;;
    --enforce) ENFORCE=1 ;;
    --keep) KEEP=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench/run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
for v in "$TOKENS" "$LARGE_TOKENS" "$DURATION" "$WARMUP" "$ROUNDS" "$CONNS"; do
  case "$v" in *[!0-9]*) echo "bench/run.sh: whole numbers only: $v" >&2; exit 2 ;; esac
done
if [ "$SMOKE" = 1 ]; then
  TOKENS=${TOKENS:-1000}; DURATION=${DURATION:-2}; WARMUP=${WARMUP:-1}; ROUNDS=${ROUNDS:-1}
  LARGE_TOKENS=${LARGE_TOKENS:-$TOKENS}; ARGON_TOKENS=16; QUIET_MAX=5
else
  TOKENS=${TOKENS:-100000}; DURATION=${DURATION:-10}; WARMUP=${WARMUP:-3}; ROUNDS=${ROUNDS:-2}
  LARGE_TOKENS=${LARGE_TOKENS:-1000000}; ARGON_TOKENS=256; QUIET_MAX=60
fi
[ "$TOKENS" -ge 10 ] || { echo "bench/run.sh: --tokens must be at least 10" >&2; exit 2; }
[ "$LARGE_TOKENS" -ge 10 ] || { echo "bench/run.sh: --large-tokens must be at least 10" >&2; exit 2; }
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 600 ] || { echo "bench/run.sh: --duration 1..600" >&2; exit 2; }
[ "$WARMUP" -le 600 ] || { echo "bench/run.sh: --warmup 0..600" >&2; exit 2; }
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 10 ] || { echo "bench/run.sh: --rounds 1..10" >&2; exit 2; }
[ "$CONNS" -ge 2 ] && [ "$CONNS" -le 1000 ] || { echo "bench/run.sh: --connections 2..1000" >&2; exit 2; }
# The cycling scenario's cache holds a tenth of the tokens, so most verifications are misses.
CYCLE_CACHE=$(( TOKENS / 10 > 1 ? TOKENS / 10 : 1 ))

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools
need_tool() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  log "$1 is missing; installing the Debian package $2"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; } >&2 ||
      die "could not install $2"
  else
    die "$1 is needed: apt-get install $2"
  fi
}
need_tool wrk wrk
need_tool curl curl
[ "$CALLGRIND" = 0 ] || need_tool valgrind valgrind

# CPU layout. The load generator runs on this machine too. By default it shares every CPU with
# the servers, as the targets were set; then the scheduler's time slices between the two, not
# the servers' work, set much of the latency tail (on 2 vCPUs the no-op baseline's own p99 is
# 2-4 ms). --pin separates them, as separate machines would: the servers get the first half of
# the CPUs and size their runtimes from it (one worker on 2 CPUs), the load generator the rest;
# both servers get the same layout. Needs taskset and at least 2 CPUs.
pin_layout "$PIN" bench/run.sh

TARGET_DIR=${CARGO_TARGET_DIR:-target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN="$TARGET_DIR/$BENCH_PROFILE_DIR"
log "building ($BENCH_PROFILE) into $TARGET_DIR"
cargo build --profile "$BENCH_PROFILE" --bin latchkey --examples >&2 || die "cargo build failed"
for b in latchkey examples/baseline examples/bare examples/seed examples/grpc_load examples/verify_count; do
  [ -x "$BIN/$b" ] || die "missing $BIN/$b after the build"
done

# ---------------------------------------------------------------------------------------------
# Processes: every server and load generator runs in the background with its pid in PIDS, so
# that all of them are stopped on exit, also on failure or interrupt.
TMP=$(mktemp -d "${TMPDIR:-/tmp}/latchkey-bench.XXXXXX")
PIDS=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$KEEP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() { # pid: no longer ours to stop (it has exited and been waited for)
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

stop_pid() { # pid: TERM, wait up to 10 s, KILL
  local pid=$1
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

run_tracked() { # out-file command...: runs it in the background, tracked, and waits for it
  local out=$1 pid status=0
  shift
  "$@" >"$out" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || status=$?
  forget_pid "$pid"
  return "$status"
}

# Waits until the machine is quiet (under 15% of the CPU busy over half a second), at most
# QUIET_MAX seconds (60; 5 in smoke mode).
BUSY_WAITS=0
BUSY_STARTS=0
cpu_busy_pct() {
  local a b
  a=$(awk '/^cpu / { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat)
  sleep 0.5
  b=$(awk '/^cpu / { print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[2] - x[2];
    busy = 0; if (t > 0) busy = 100 * (y[1] - x[1]) / t; printf "%d", busy }'
}
wait_quiet() {
  local i busy
  for i in $(seq $(( QUIET_MAX * 2 ))); do
    busy=$(cpu_busy_pct)
    [ "$busy" -lt 15 ] && return 0
    [ "$i" = 1 ] && { log "the machine is busy ($busy% CPU by others); waiting"; BUSY_WAITS=$((BUSY_WAITS + 1)); }
  done
  log "still busy after $QUIET_MAX s; measuring anyway (figures may be low)"
  BUSY_STARTS=$((BUSY_STARTS + 1))
}

# Flags of this build of `latchkey serve`: the suite adapts to flags that exist.
SERVE_HELP=$("$BIN/latchkey" serve --help 2>&1 || true)
has_flag() { grep -q -- "$1" <<<"$SERVE_HELP"; }
EXTRA_FLAGS=()
# The mint scenario measures capacity: the per-client and per-token mint limits and the
# management limit are off. The failed-verification limit stays at its default: it is part of
# what the attack scenario tests.
if has_flag --rate-limit-mint-per-hour; then EXTRA_FLAGS+=(--rate-limit-mint-per-hour 0); fi
if has_flag --rate-limit-mint-per-token-per-hour; then EXTRA_FLAGS+=(--rate-limit-mint-per-token-per-hour 0); fi
if has_flag --rate-limit-per-second; then EXTRA_FLAGS+=(--rate-limit-per-second 0); fi
# Two load generators on one machine stand for two clients by X-Forwarded-For, as behind nginx;
# without this flag every request comes from 127.0.0.1.
XFF_SUPPORTED=0
if has_flag --trusted-proxies; then EXTRA_FLAGS+=(--trusted-proxies 127.0.0.1/32); XFF_SUPPORTED=1; fi

LK_MORE=() # flags of the next server only
latchkey_serve() { # db-file hash cache-capacity -> LK_SERVE: the command, all but --listen
  LK_SERVE=("$BIN/latchkey" serve --database-url "sqlite://$1" --log-format json --hash "$2"
    --cache-capacity "$3" "${EXTRA_FLAGS[@]}" "${LK_MORE[@]}")
}

LK_PID=""; LK_URL=""; LK_LOG=""
start_latchkey() { # name db-file hash cache-capacity
  local name=$1 db=$2 hash=$3 cap=$4 port
  port=$(free_port) || die "no free port"
  LK_LOG="$TMP/$name.log"
  latchkey_serve "$db" "$hash" "$cap"
  LATCHKEY_LOG=warn "${SERVER_PIN[@]}" "${LK_SERVE[@]}" --listen "127.0.0.1:$port" >"$LK_LOG" 2>&1 &
  LK_PID=$!
  PIDS+=("$LK_PID")
  LK_URL="http://127.0.0.1:$port"
  wait_http "$LK_URL/healthz" "$LK_PID" 60 || { cat "$LK_LOG" >&2; die "latchkey ($name) did not start"; }
  log "latchkey $name: pid $LK_PID on $LK_URL (hash $hash, cache $cap)"
}

bootstrap_token() { # the bootstrap line: contains _pat_, is not a JSON log line
  grep -a '_pat_' "$LK_LOG" | grep -v '^{' | head -n1 | tr -d '[:space:]'
}

seed() { # db-file count hash out [wrong-out]
  # SHA-256 sets are written with multi-row inserts (examples/seed.rs --method sql); the small
  # Argon2id set goes through Store::insert_token, one transaction per token, as the server does.
  local method=sql
  [ "$3" = argon2id ] && method=store
  local args=(--database-url "sqlite://$1" --count "$2" --hash "$3" --out "$4" --method "$method")
  [ $# -ge 5 ] && args+=(--wrong-out "$5")
  run_tracked "$TMP/seed.out" "$BIN/examples/seed" "${args[@]}" ||
    { cat "$TMP/seed.out" >&2; die "seeding $2 $3 tokens failed"; }
  log "seeded: $(tail -n1 "$TMP/seed.out")"
}

check_valid() { # url token: a verification answers valid
  local body
  body=$(curl -s --max-time 10 -H 'Content-Type: application/json' \
    -d "{\"token\":\"$2\"}" "$1/v1/tokens/verify") || return 1
  grep -q '"valid":true' <<<"$body" || { log "verify answered: $body"; return 1; }
}

metric() { # url name-with-labels -> value (0 when absent)
  curl -s --max-time 5 "$1/metrics" | awk -v m="$2" '$1 == m { v = $2 } END { printf "%d", v + 0 }'
}

# ---------------------------------------------------------------------------------------------
# Load. Every measurement leaves its JSON in J.
J=""

# PACE_MS, when set, runs one connection on one thread that waits PACE_MS before each request.
PACE_MS=""
wrk_run() { # url mode file seconds [bearer] [xff] [check]
  local url=$1 mode=$2 file=$3 secs=$4 bearer=${5:--} xff=${6:--} check=${7:--} t=$THREADS c=$CONNS
  [ -z "$PACE_MS" ] || { t=1; c=1; }
  J=""
  run_tracked "$TMP/wrk.out" timeout $(( secs + 60 )) "${CLIENT_PIN[@]}" wrk -t"$t" -c"$c" -d"${secs}s" \
    --timeout 10s -s "$ROOT/bench/wrk.lua" "$url" -- "$mode" "$file" "$t" "$bearer" \
    "$$-$RANDOM-$SECONDS" "$xff" "$check" "${PACE_MS:--}" ||
    { log "wrk failed: $(cat "$TMP/wrk.out")"; return 1; }
  J=$(sed -n 's/^WRKJSON //p' "$TMP/wrk.out" | head -n1)
}

measure_wrk() { # url mode file [bearer] [xff] [check]: warm-up, then the measurement
  wrk_run "$1" "$2" "$3" "$WARMUP" "${4:--}" "${5:--}" "${6:--}" || return 1
  wrk_run "$1" "$2" "$3" "$DURATION" "${4:--}" "${5:--}" "${6:--}"
}

measure_grpc() { # url file
  J=""
  run_tracked "$TMP/grpc.out" timeout $(( WARMUP + DURATION + 60 )) "${CLIENT_PIN[@]}" "$BIN/examples/grpc_load" \
    --url "$1" --tokens "$2" --connections "$CONNS" --warmup "$WARMUP" --duration "$DURATION" ||
    { log "grpc_load failed: $(cat "$TMP/grpc.out")"; return 1; }
  J=$(grep '^{' "$TMP/grpc.out" | tail -n1)
}

# Attack traffic (by default wrong secrets for existing ids: each one an Argon2id check unless a
# limit stops it) from one client, valid verifications of a warm Argon2id token from another,
# at the same time. The valid stream is measured; the attack's figures are added to its JSON.
VALID_XFF=-
[ "$XFF_SUPPORTED" = 0 ] || VALID_XFF=198.51.100.10
measure_attack() { # url [attack-mode attack-file attacker-address valid-file valid-address]
  local url=$1 mode=${2:-verify} file=${3:-$TMP/argon-attack.txt} apid xa=- attack valid status=0
  local vfile=${5:-$TMP/argon-warm.txt} vxff=${6:-$VALID_XFF}
  [ "$XFF_SUPPORTED" = 0 ] || xa=${4:-203.0.113.66}
  timeout $(( WARMUP + DURATION + 60 )) "${CLIENT_PIN[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$(( WARMUP + DURATION + 2 ))s" \
    --timeout 10s -s "$ROOT/bench/wrk.lua" "$url" -- "$mode" "$file" "$THREADS" - \
    "$$-$RANDOM" "$xa" >"$TMP/attack.out" 2>&1 &
  apid=$!
  PIDS+=("$apid")
  sleep 1
  measure_wrk "$url" verify "$vfile" - "$vxff" check || status=1
  valid=$J
  wait "$apid" || status=1
  forget_pid "$apid"
  [ "$status" = 0 ] || { log "attack run failed: $(cat "$TMP/attack.out")"; J=""; return 1; }
  attack=$(sed -n 's/^WRKJSON //p' "$TMP/attack.out" | head -n1)
  [ -n "$attack" ] && [ -n "$valid" ] || { J=""; return 1; }
  J="${valid%\}},\"attack_rps\":$(num rps "$attack"),\"attack_p99_us\":$(num p99_us "$attack"),\"attack_non_2xx\":$(num status_errors "$attack"),\"attack_requests\":$(num requests "$attack"),\"attack_seconds\":$(num seconds "$attack"),\"attack_socket_errors\":$(num socket_errors "$attack")}"
}

sane() { # json [allow-invalid]: the load generator ran and got the answers it expected
  local j=$1 n k v
  [ -n "$j" ] || return 1
  n=$(num requests "$j"); [ -n "$n" ] && [ "${n%.*}" -gt 0 ] || { log "no requests completed"; return 1; }
  for k in socket_errors status_errors errors invalid; do
    [ "$k" = invalid ] && [ "${2:-0}" = 1 ] && continue
    v=$(num "$k" "$j")
    [ -z "$v" ] || [ "$v" = 0 ] || { log "load generator reported $k=$v"; return 1; }
  done
}

# Runs the two sides ROUNDS times, alternating (baseline first), each after the machine is
# quiet, and keeps the best measurement of each side in BASE_J / LK_J: the one with the most
# requests per second, or with ALT_PICK=lowest_p99 the one with the lowest p99. An empty
# baseline function measures Latchkey alone. With ALT_BARE set to a function, that side (the bare
# server) is measured too, after the baseline in each round, its best in BARE_J.
BASE_J=""; LK_J=""; BARE_J=""; ALT_ERR=""
alternate() { # baseline-fn latchkey-fn [allow-invalid]
  local r pick=${ALT_PICK:-best}
  BASE_J=""; LK_J=""; BARE_J=""; ALT_ERR=""
  for r in $(seq "$ROUNDS"); do
    if [ -n "$1" ]; then
      wait_quiet
      "$1" && sane "$J" || { ALT_ERR="baseline run $r"; return 1; }
      BASE_J=$("$pick" "$BASE_J" "$J")
    fi
    if [ -n "${ALT_BARE:-}" ]; then
      wait_quiet
      "$ALT_BARE" && sane "$J" || { ALT_ERR="bare run $r"; return 1; }
      BARE_J=$("$pick" "$BARE_J" "$J")
    fi
    wait_quiet
    "$2" && sane "$J" "${3:-0}" || { ALT_ERR="latchkey run $r"; return 1; }
    LK_J=$("$pick" "$LK_J" "$J")
  done
}

# ---------------------------------------------------------------------------------------------
# Results: one row per scenario.
ROWS=()      # name|rps|p50_us|p99_us|base_rps|base_p99_us|rss_mib|target|met|bare_rps|bare_p99_us|bare_target|bare_met|extra-json
FAILED=()
MISSED=()
NOTES=()     # lines printed under the table

ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "0" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }

# Against the bare server (RECORD_BARE_J, when set): at least BARE_TARGET of its rate.
BARE_TARGET=0.80
RECORD_BARE_J=""
record() { # name lk-json base-json rss target met [extra-json]
  local name=$1 lk=$2 base=$3 rss=$4 target=$5 met=$6 extra=${7:-"{}"} b="" bare=$RECORD_BARE_J
  local brps="" bp99="" btarget="" bmet=""
  if [ -n "$bare" ]; then
    brps=$(num rps "$bare"); bp99=$(num p99_us "$bare"); btarget=">= ${BARE_TARGET}x bare"; bmet=no
    ge "$(ratio "$(num rps "$lk")" "$brps")" "$BARE_TARGET" && bmet=yes
    [ "$bmet" = yes ] || MISSED+=("$name(bare)")
    b=" bare $brps req/s (target $btarget: $bmet);"
  fi
  ROWS+=("$name|$(num rps "$lk")|$(num p50_us "$lk")|$(num p99_us "$lk")|$(num rps "$base")|$(num p99_us "$base")|$rss|$target|$met|$brps|$bp99|$btarget|$bmet|$extra")
  [ "$met" = yes ] || [ "$met" = - ] || MISSED+=("$name")
  [ -z "$base" ] || b=" baseline $(num rps "$base") req/s;$b"
  log "$name: $(num rps "$lk") req/s, p50 $(ms "$(num p50_us "$lk")") ms, p99 $(ms "$(num p99_us "$lk")") ms;$b target $target: $met"
}

fail() { FAILED+=("$1"); log "scenario $1 could not run: $2"; }

counters() { # -> "invalid rate_limited" as counted by the server so far
  echo "$(metric "$LK_URL" 'latchkey_verify_total{result="invalid"}') $(metric "$LK_URL" 'latchkey_verify_total{result="rate_limited"}')"
}
not_valid_since() { # "invalid rate_limited" from counters -> verifications answered not valid since
  local before=($1) now
  now=($(counters))
  echo $(( now[0] - before[0] + now[1] - before[1] ))
}

# ---------------------------------------------------------------------------------------------
MACHINE="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
MODE=full
[ "$SMOKE" = 0 ] || MODE=smoke
log "machine: $MACHINE"
log "CPU layout: $CPU_LAYOUT"
log "mode: $MODE; tokens $TOKENS; $CONNS connections; ${WARMUP}s warm-up + ${DURATION}s per measurement; best of $ROUNDS round(s)"

BASE_PORT=$(free_port) || die "no free port"
"${SERVER_PIN[@]}" "$BIN/examples/baseline" --listen "127.0.0.1:$BASE_PORT" >"$TMP/baseline.log" 2>&1 &
BASE_PID=$!
PIDS+=("$BASE_PID")
BASE_URL="http://127.0.0.1:$BASE_PORT"
wait_http "$BASE_URL/" "$BASE_PID" 30 || { cat "$TMP/baseline.log" >&2; die "the baseline server did not start"; }
log "baseline: pid $BASE_PID on $BASE_URL"
BARE_PORT=$(free_port) || die "no free port"
"${SERVER_PIN[@]}" "$BIN/examples/bare" --listen "127.0.0.1:$BARE_PORT" >"$TMP/bare.log" 2>&1 &
BARE_PID=$!
PIDS+=("$BARE_PID")
BARE_URL="http://127.0.0.1:$BARE_PORT"
wait_http "$BARE_URL/" "$BARE_PID" 30 || { cat "$TMP/bare.log" >&2; die "the bare server did not start"; }
log "bare: pid $BARE_PID on $BARE_URL"

# --- Phase 1: SHA-256 tokens, warm -----------------------------------------------------------
DB1="$TMP/lk.db"
start_latchkey sha256 "$DB1" sha256 100000
ADMIN=$(bootstrap_token)
[ -n "$ADMIN" ] || die "no bootstrap token in the server's stderr"
seed "$DB1" "$TOKENS" sha256 "$TMP/tokens.txt"
head -n1 "$TMP/tokens.txt" >"$TMP/warm.txt"
check_valid "$LK_URL" "$(cat "$TMP/warm.txt")" || die "a seeded token does not verify"
check_valid "$LK_URL" "$(tail -n1 "$TMP/tokens.txt")" || die "a seeded token does not verify"

b_verify_warm() { measure_wrk "$BASE_URL" verify "$TMP/warm.txt"; }
l_verify_warm() { measure_wrk "$LK_URL" verify "$TMP/warm.txt"; }
b_check_warm() { measure_wrk "$BASE_URL" check "$TMP/warm.txt"; }
# The bare server answers the same requests: 200 and a fixed body to the verify, 204 to the check.
x_verify_warm() { measure_wrk "$BARE_URL" verify "$TMP/warm.txt"; }
x_check_warm() { measure_wrk "$BARE_URL" check "$TMP/warm.txt"; }
# wrk counts every non-2xx answer: a 401/403/429 makes the run fail the sanity check.
l_check_warm() { measure_wrk "$LK_URL" check "$TMP/warm.txt"; }
b_grpc_warm() { measure_grpc "$BASE_URL" "$TMP/warm.txt"; }
l_grpc_warm() { measure_grpc "$LK_URL" "$TMP/warm.txt"; }
l_mint() { measure_wrk "$LK_URL" mint - "$ADMIN"; }

warm_scenario() { # name baseline-fn latchkey-fn target-text min-ratio max-p99-us (0: none) [bare-fn]
  local name=$1 before bad met=no status=0
  before=$(counters)
  ALT_BARE=${7:-} alternate "$2" "$3" || status=1
  [ "$status" = 0 ] || { fail "$name" "$ALT_ERR"; return 1; }
  bad=$(not_valid_since "$before")
  [ "$bad" = 0 ] || { fail "$name" "$bad verifications were not valid"; return 1; }
  ge "$(ratio "$(num rps "$LK_J")" "$(num rps "$BASE_J")")" "$5" &&
    { [ "$6" = 0 ] || le "$(num p99_us "$LK_J")" "$6"; } && met=yes
  RECORD_BARE_J=$BARE_J
  record "$name" "$LK_J" "$BASE_J" "$(rss_mib "$LK_PID")" "$4" "$met"
  RECORD_BARE_J=""
}

warm_scenario rest_verify_warm b_verify_warm l_verify_warm ">= 0.75x baseline, p99 <= 2 ms" 0.75 2000 x_verify_warm || true
warm_scenario auth_check_warm b_check_warm l_check_warm ">= 0.75x baseline, p99 <= 2 ms" 0.75 2000 x_check_warm || true
warm_scenario grpc_validate_warm b_grpc_warm l_grpc_warm ">= 0.75x baseline tonic" 0.75 0 || true

# The latency a request sees when the server is not saturated: one connection, one request per
# millisecond. The difference of the medians is what verification adds to a request.
b_unloaded() { PACE_MS=1; measure_wrk "$BASE_URL" verify "$TMP/warm.txt"; local s=$?; PACE_MS=""; return $s; }
l_unloaded() { PACE_MS=1; measure_wrk "$LK_URL" verify "$TMP/warm.txt"; local s=$?; PACE_MS=""; return $s; }
before=$(counters)
if alternate b_unloaded l_unloaded && [ "$(not_valid_since "$before")" = 0 ]; then
  added=$(( $(num p50_us "$LK_J") - $(num p50_us "$BASE_J") ))
  record rest_verify_unloaded "$LK_J" "$BASE_J" "$(rss_mib "$LK_PID")" "- (added p50: ${added} us)" - \
    "{\"pace_ms\":1,\"connections\":1,\"added_p50_us\":$added,\"added_p99_us\":$(( $(num p99_us "$LK_J") - $(num p99_us "$BASE_J") ))}"
else
  fail rest_verify_unloaded "${ALT_ERR:-verifications were not valid}"
fi

created0=$(metric "$LK_URL" latchkey_token_created_total)
if alternate "" l_mint; then
  created=$(( $(metric "$LK_URL" latchkey_token_created_total) - created0 ))
  met=no; ge "$(num rps "$LK_J")" 2000 && met=yes
  record mint "$LK_J" "" "$(rss_mib "$LK_PID")" ">= 2,000 tokens/s" "$met" \
    "{\"tokens_created\":$created,\"note\":\"201 answers only; the baseline has no mint route\"}"
else
  fail mint "$ALT_ERR"
fi
stop_pid "$LK_PID"

# --- Phase 1b: a key imported from another system against a native token, both warm ----------
# A database of its own, so that no later scenario runs with an import scheme enabled. The key
# is a Laravel-style `tok_` + 64 hex, imported as its SHA-256 through POST /v1/tokens/import.
DB3="$TMP/lk-imported.db"
start_latchkey imported "$DB3" sha256 100000
ADMIN3=$(bootstrap_token)
[ -n "$ADMIN3" ] || die "no bootstrap token in the server's stderr"
seed "$DB3" 1 sha256 "$TMP/native3.txt"
IMPORTED_KEY="tok_$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$IMPORTED_KEY" >"$TMP/imported-warm.txt"
IMPORTED_HASH=$(printf '%s' "$IMPORTED_KEY" | sha256sum | cut -d' ' -f1)
curl -fsS --max-time 10 -X POST "$LK_URL/v1/tokens/import" -H "Authorization: Bearer $ADMIN3" \
  -H 'Content-Type: application/x-ndjson' \
  --data-binary "{\"scheme\":\"sha256\",\"hash\":\"$IMPORTED_HASH\",\"name\":\"bench imported\",\"permissions\":4}" \
  >"$TMP/import.out" || { cat "$TMP/import.out" >&2; die "importing the key failed"; }
check_valid "$LK_URL" "$(cat "$TMP/native3.txt")" || die "a seeded token does not verify"
check_valid "$LK_URL" "$IMPORTED_KEY" || die "the imported key does not verify"
n_native_warm() { measure_wrk "$LK_URL" verify "$TMP/native3.txt"; }
n_imported_warm() { measure_wrk "$LK_URL" verify "$TMP/imported-warm.txt"; }
warm_scenario imported_sha256_verify_warm n_native_warm n_imported_warm ">= 0.90x native warm" 0.90 0 || true
stop_pid "$LK_PID"

# --- Phase 2: cycling through every token, the cache a tenth of the set -----------------------
# For phase 2b, bad tokens of three kinds: garbage, unknown ids with valid checksums (tokens of
# another database), and wrong secrets of real tokens (1,000 more in this one), interleaved.
seed "$TMP/elsewhere.db" 1000 sha256 "$TMP/unknown.txt"
seed "$DB1" 1000 sha256 "$TMP/extra.txt" "$TMP/wrong.txt"
for i in $(seq 1000); do echo "lk_pat_garbage$i"; done >"$TMP/garbage.txt"
paste -d'\n' "$TMP/garbage.txt" "$TMP/unknown.txt" "$TMP/wrong.txt" >"$TMP/shared-attack.txt"
start_latchkey cycling "$DB1" sha256 "$CYCLE_CACHE"
b_cycle() { measure_wrk "$BASE_URL" verify "$TMP/tokens.txt"; }
l_cycle() { measure_wrk "$LK_URL" verify "$TMP/tokens.txt"; }
before=$(counters)
if alternate b_cycle l_cycle; then
  bad=$(not_valid_since "$before")
  if [ "$bad" = 0 ]; then
    met=no; ge "$(ratio "$(num rps "$LK_J")" "$(num rps "$BASE_J")")" 0.30 && met=yes
    record rest_verify_cycling "$LK_J" "$BASE_J" "$(rss_mib "$LK_PID")" ">= 0.30x baseline" "$met" \
      "{\"tokens\":$TOKENS,\"cache_capacity\":$CYCLE_CACHE}"
  else
    fail rest_verify_cycling "$bad verifications were not valid"
  fi
else
  fail rest_verify_cycling "$ALT_ERR"
fi

# --- Phase 2b: a shared address under attack -----------------------------------------------------
# The cycling client again, and beside it, from the same address (no X-Forwarded-For, as behind
# one gateway), a client sending the bad tokens above as fast as it can; the failure limit at its
# default. Target: no genuine verification fails (an INVALID or RATE_LIMITED answer to a genuine
# token). The base columns are the cycling client alone, measured alternately.
b_shared() { measure_wrk "$LK_URL" verify "$TMP/tokens.txt" - - check; }
l_shared() { measure_attack "$LK_URL" verify "$TMP/shared-attack.txt" - "$TMP/tokens.txt" -; }
before=$(counters)
if alternate b_shared l_shared 1; then
  now=($(counters)); was=($before)
  vbad=$(( $(num invalid "$LK_J") + $(num invalid "$BASE_J") ))
  met=no; [ "$vbad" = 0 ] && met=yes
  record shared_address_attack "$LK_J" "$BASE_J" "$(rss_mib "$LK_PID")" "no genuine verification fails" "$met" \
    "{\"genuine_answered_not_valid\":$vbad,\"attack_rps\":$(num attack_rps "$LK_J"),\"attack_p99_ms\":$(ms "$(num attack_p99_us "$LK_J")"),\"server_answered_rate_limited\":$(( now[1] - was[1] )),\"compared_with\":\"the cycling client alone (the base columns)\"}"
else
  fail shared_address_attack "$ALT_ERR"
fi
stop_pid "$LK_PID"

# --- Phase 3: Argon2id ------------------------------------------------------------------------
# Argon2id against SHA-256, both warm, measured alternately like every other pair: a figure from
# the first phase, minutes earlier, would compare the machine's moods as much as the hashes.
start_latchkey sha256-again "$DB1" sha256 100000
SHA_PID=$LK_PID; SHA_URL=$LK_URL
check_valid "$SHA_URL" "$(cat "$TMP/warm.txt")" || die "a seeded token does not verify"
DB2="$TMP/lk-argon2.db"
start_latchkey argon2id "$DB2" argon2id 100000
ADMIN2=$(bootstrap_token)
[ -n "$ADMIN2" ] || die "no bootstrap token in the server's stderr"
seed "$DB2" "$ARGON_TOKENS" argon2id "$TMP/argon.txt" "$TMP/argon-wrong.txt"
head -n1 "$TMP/argon.txt" >"$TMP/argon-warm.txt"
tail -n +2 "$TMP/argon-wrong.txt" >"$TMP/argon-attack.txt"
check_valid "$LK_URL" "$(cat "$TMP/argon-warm.txt")" || die "an Argon2id token does not verify"

s_sha_warm() { measure_wrk "$SHA_URL" verify "$TMP/warm.txt"; }
l_argon_warm() { measure_wrk "$LK_URL" verify "$TMP/argon-warm.txt"; }
before=$(counters)
if alternate s_sha_warm l_argon_warm; then
  bad=$(not_valid_since "$before")
  if [ "$bad" = 0 ]; then
    met=no
    to_sha=$(ratio "$(num rps "$LK_J")" "$(num rps "$BASE_J")")
    ge "$to_sha" 0.90 && met=yes
    record argon2id_verify_warm "$LK_J" "$BASE_J" "$(rss_mib "$LK_PID")" ">= 0.90x sha256 warm" "$met" \
      "{\"compared_with\":\"latchkey --hash sha256, warm, measured alternately (the base columns)\",\"ratio_to_sha256_warm\":$to_sha}"
  else
    fail argon2id_verify_warm "$bad verifications were not valid"
  fi
else
  fail argon2id_verify_warm "$ALT_ERR"
fi
stop_pid "$SHA_PID"

b_attack() { measure_attack "$BASE_URL"; }
l_attack() { measure_attack "$LK_URL"; }
before=$(counters)
# The valid stream must be all 2xx; a valid token answered INVALID or RATE_LIMITED is counted
# (and misses the target), not a harness failure.
if alternate b_attack l_attack 1; then
  now=($(counters)); was=($before)
  vbad=$(num invalid "$LK_J")
  met=no; le "$(num p99_us "$LK_J")" 5000 && [ "$vbad" = 0 ] && met=yes
  record argon2id_attack_valid_p99 "$LK_J" "$BASE_J" "$(rss_mib "$LK_PID")" "valid p99 <= 5 ms under attack" "$met" \
    "{\"valid_answered_not_valid\":$vbad,\"attack_rps\":$(num attack_rps "$LK_J"),\"attack_p99_ms\":$(ms "$(num attack_p99_us "$LK_J")"),\"attack_non_2xx\":$(num attack_non_2xx "$LK_J"),\"server_answered_invalid\":$(( now[0] - was[0] )),\"server_answered_rate_limited\":$(( now[1] - was[1] )),\"clients_by_x_forwarded_for\":$([ "$XFF_SUPPORTED" = 1 ] && echo true || echo false)}"
else
  fail argon2id_attack_valid_p99 "$ALT_ERR"
fi
stop_pid "$LK_PID"

# --- Phase 3b: a sign-in flood ------------------------------------------------------------------
# The attack scenario above with password sign-ins as the attack: one client sends
# POST /v1/auth/token with wrong passwords for a real user (three in four) and unknown emails (one
# in four) while another verifies the warm Argon2id token; the valid stream is measured with the
# flood and without it, alternately, on the same server (the base columns are the run without).
# Each attempt is one Argon2id check on the pool that also checks Argon2id tokens (a wrong
# password of a real user also writes its audit event). The per-address sign-in limit is off on
# this server (--rate-limit-login-per-15m 0), so no attempt is refused before its hash: the case
# of an attacker with as many addresses as it likes. Then the time of single failed exchanges,
# one at a time on the idle server: a real user's wrong password, an unknown email, a disabled
# user's right password; their medians should be within 2x of each other.
SIGNIN_PASSWORD="bench password 1234"
SIGNIN_USER=bench-signin@example.com
SIGNIN_GONE=bench-disabled@example.com
SIGNIN_SAMPLES=20
API_CODE=""; API_BODY=""
api() { # method path bearer|- json-body -> API_CODE, API_BODY
  local auth=() out
  [ "$3" = - ] || auth=(-H "Authorization: Bearer $3")
  API_CODE=000; API_BODY=""
  out=$(curl -s --max-time 30 -X "$1" -H 'Content-Type: application/json' "${auth[@]}" \
    -d "$4" -w '\n%{http_code}' "$LK_URL$2") || return 1
  API_CODE=${out##*$'\n'}
  API_BODY=${out%$'\n'*}
}
api_expect() { # code method path bearer|- json-body
  local want=$1
  shift
  api "$@" && [ "$API_CODE" = "$want" ] || { log "$1 $2 answered $API_CODE (not $want): $API_BODY"; return 1; }
}
make_person() { # email -> PERSON_ID: a member whose password is SIGNIN_PASSWORD
  local setup
  api_expect 201 POST /v1/users "$ADMIN2" "{\"email\":\"$1\",\"name\":\"Bench Person\",\"role\":\"member\"}" || return 1
  PERSON_ID=$(sed -n 's/.*"user":{"id":"\([^"]*\)".*/\1/p' <<<"$API_BODY")
  setup=$(sed -n 's/.*"setup_token":"\([^"]*\)".*/\1/p' <<<"$API_BODY")
  [ -n "$PERSON_ID" ] && [ -n "$setup" ] || { log "no user id or setup token in: $API_BODY"; return 1; }
  api_expect 200 POST /v1/auth/setup - "{\"setup_token\":\"$setup\",\"password\":\"$SIGNIN_PASSWORD\"}"
}
signin_ms() { # email password -> the milliseconds of one exchange, which must fail with 401
  local out
  out=$(curl -s -o /dev/null --max-time 30 -H 'Content-Type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$2\",\"name\":\"bench\"}" -w '%{http_code} %{time_total}' \
    "$LK_URL/v1/auth/token") || return 1
  [ "${out% *}" = 401 ] || { log "a failed sign-in answered ${out% *}"; return 1; }
  awk -v t="${out#* }" 'BEGIN { printf "%.3f\n", t * 1000 }'
}
median() { # numbers on stdin, one a line -> their median
  sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

if has_flag --rate-limit-login-per-15m; then
  LK_MORE=(--rate-limit-login-per-15m 0)
  start_latchkey signin "$DB2" argon2id 100000
  LK_MORE=()
  SIGNIN_OK=0
  if make_person "$SIGNIN_USER" && make_person "$SIGNIN_GONE" && GONE_ID=$PERSON_ID &&
     api_expect 200 POST "/v1/users/$GONE_ID/disable" "$ADMIN2" '{}' &&
     api_expect 201 POST /v1/auth/token - "{\"email\":\"$SIGNIN_USER\",\"password\":\"$SIGNIN_PASSWORD\",\"name\":\"bench-check\"}" &&
     check_valid "$LK_URL" "$(cat "$TMP/argon-warm.txt")"; then
    SIGNIN_OK=1
  fi
  # Three wrong passwords of the real user to one unknown email, every line a different password
  # or address.
  for i in $(seq 64); do
    if [ $(( i % 4 )) = 0 ]; then
      echo "{\"email\":\"nobody-$i@example.com\",\"password\":\"$SIGNIN_PASSWORD\",\"name\":\"flood\"}"
    else
      echo "{\"email\":\"$SIGNIN_USER\",\"password\":\"wrong password $i\",\"name\":\"flood\"}"
    fi
  done >"$TMP/signin-attack.txt"

  s_quiet() { measure_wrk "$LK_URL" verify "$TMP/argon-warm.txt" - "$VALID_XFF" check; }
  s_flood() {
    local c0 r0 c1 r1
    c0=$(metric "$LK_URL" 'latchkey_login_total{result="failure"}')
    r0=$(metric "$LK_URL" 'latchkey_rate_limited_total{limit="argon2_queue"}')
    measure_attack "$LK_URL" signin "$TMP/signin-attack.txt" 203.0.113.77 || return 1
    c1=$(metric "$LK_URL" 'latchkey_login_total{result="failure"}')
    r1=$(metric "$LK_URL" 'latchkey_rate_limited_total{limit="argon2_queue"}')
    J="${J%\}},\"signins_checked\":$(( c1 - c0 )),\"signins_refused_queue_full\":$(( r1 - r0 ))}"
  }
  if [ "$SIGNIN_OK" = 0 ]; then
    fail signin_flood_valid_p99 "could not set up the users"
    fail signin_failure_timing "could not set up the users"
  else
    # A p99 comparison: each side's least disturbed round (lowest p99), so that one stall of the
    # machine on either side does not decide it.
    if ALT_PICK=lowest_p99 alternate s_quiet s_flood 1; then
      vbad=$(num invalid "$LK_J")
      checked=$(num signins_checked "$LK_J")
      secs=$(num attack_seconds "$LK_J")
      p99_ratio=$(ratio "$(num p99_us "$LK_J")" "$(num p99_us "$BASE_J")")
      checked_ps=$(awk -v n="$checked" -v s="$secs" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }')
      if [ "${checked:-0}" -gt 0 ]; then
        met=no; le "$p99_ratio" 1.5 && [ "$vbad" = 0 ] && met=yes
        record signin_flood_valid_p99 "$LK_J" "$BASE_J" "$(rss_mib "$LK_PID")" "valid p99 <= 1.5x without flood" "$met" \
          "{\"compared_with\":\"the same valid stream on the same server without the flood, measured alternately (the base columns); each side's round with the lowest p99\",\"valid_p99_ms_with_flood\":$(ms "$(num p99_us "$LK_J")"),\"valid_p99_ms_without_flood\":$(ms "$(num p99_us "$BASE_J")"),\"p99_ratio\":$p99_ratio,\"valid_answered_not_valid\":$vbad,\"signins_answered_per_second\":$(num attack_rps "$LK_J"),\"signins_checked_per_second\":$checked_ps,\"signins_checked\":$checked,\"signins_refused_queue_full\":$(num signins_refused_queue_full "$LK_J"),\"signin_p99_ms\":$(ms "$(num attack_p99_us "$LK_J")"),\"signin_seconds\":$secs,\"login_limit\":\"off (--rate-limit-login-per-15m 0)\"}"
        NOTES+=("sign-in flood: valid verify p99 $(ms "$(num p99_us "$LK_J")") ms with, $(ms "$(num p99_us "$BASE_J")") ms without (${p99_ratio}x; target <= 1.5x: $met); $(num attack_rps "$LK_J") sign-ins/s answered, $checked_ps/s checked (Argon2id), $(num signins_refused_queue_full "$LK_J") refused with the queue full")
      else
        fail signin_flood_valid_p99 "the server checked no sign-in during the flood: $(tail -n3 "$TMP/attack.out")"
      fi
    else
      fail signin_flood_valid_p99 "$ALT_ERR"
    fi

    # One failed exchange at a time, the three kinds in turn (the first two turns not counted).
    wait_quiet
    : >"$TMP/t-wrong"; : >"$TMP/t-unknown"; : >"$TMP/t-disabled"
    timing_ok=1
    t_start=$(date +%s%N)
    for i in $(seq $(( SIGNIN_SAMPLES + 2 ))); do
      for k in 0 1 2; do
        case $(( (i + k) % 3 )) in
          0) kind=wrong; t=$(signin_ms "$SIGNIN_USER" "wrong password $i") ;;
          1) kind=unknown; t=$(signin_ms "nobody-$i-$k@example.com" "$SIGNIN_PASSWORD") ;;
          2) kind=disabled; t=$(signin_ms "$SIGNIN_GONE" "$SIGNIN_PASSWORD") ;;
        esac || { timing_ok=0; break 2; }
        [ "$i" -le 2 ] || echo "$t" >>"$TMP/t-$kind"
      done
      [ "$i" != 2 ] || t_start=$(date +%s%N)
    done
    t_end=$(date +%s%N)
    if [ "$timing_ok" = 1 ]; then
      m_wrong=$(median <"$TMP/t-wrong"); m_unknown=$(median <"$TMP/t-unknown"); m_disabled=$(median <"$TMP/t-disabled")
      all=$(cat "$TMP/t-wrong" "$TMP/t-unknown" "$TMP/t-disabled")
      n_all=$(wc -l <<<"$all")
      spread=$(printf '%s\n' "$m_wrong" "$m_unknown" "$m_disabled" |
        awk 'NR == 1 || $1 > hi { hi = $1 } NR == 1 || $1 < lo { lo = $1 } END { printf "%.2f", (lo > 0 ? hi / lo : 0) }')
      us() { awk -v m="$1" 'BEGIN { printf "%d", m * 1000 }'; }
      tj="{\"requests\":$n_all,\"seconds\":$(awk -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'),\"rps\":$(awk -v n="$n_all" -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.1f", n / ((b - a) / 1e9) }'),\"p50_us\":$(us "$(median <<<"$all")"),\"p99_us\":$(us "$(sort -n <<<"$all" | tail -n1)")}"
      met=no; le "$spread" 2 && met=yes
      record signin_failure_timing "$tj" "" "$(rss_mib "$LK_PID")" "failure medians within 2x" "$met" \
        "{\"samples_each\":$SIGNIN_SAMPLES,\"median_ms_wrong_password\":$m_wrong,\"median_ms_unknown_email\":$m_unknown,\"median_ms_disabled_user\":$m_disabled,\"max_over_min\":$spread,\"note\":\"one request at a time on a new connection (curl); p99 is the slowest of all\"}"
      NOTES+=("failed sign-in, median of $SIGNIN_SAMPLES each: wrong password $m_wrong ms, unknown email $m_unknown ms, disabled user $m_disabled ms (max/min ${spread}x; target <= 2x: $met)")
    else
      fail signin_failure_timing "a failed sign-in did not answer 401"
    fi
  fi
  stop_pid "$LK_PID"
else
  log "this build has no --rate-limit-login-per-15m: no sign-in scenarios"
fi

# --- Phase 4: a large database ----------------------------------------------------------------
if [ "$SKIP_LARGE" = 0 ]; then
  DB3="$TMP/lk-large.db"
  start_latchkey large "$DB3" sha256 100000
  log "seeding $LARGE_TOKENS tokens"
  seed "$DB3" "$LARGE_TOKENS" sha256 "$TMP/large.txt"
  check_valid "$LK_URL" "$(tail -n1 "$TMP/large.txt")" || die "a seeded token does not verify"
  b_large() { measure_wrk "$BASE_URL" verify "$TMP/large.txt"; }
  l_large() { measure_wrk "$LK_URL" verify "$TMP/large.txt"; }
  before=$(counters)
  if alternate b_large l_large; then
    bad=$(not_valid_since "$before")
    if [ "$bad" = 0 ]; then
      rss=$(rss_mib "$LK_PID")
      met=no; le "$(num p99_us "$LK_J")" 5000 && le "$rss" 200 && met=yes
      record large_db_verify_cycling "$LK_J" "$BASE_J" "$rss" "p99 <= 5 ms, RSS <= 200 MiB" "$met" \
        "{\"tokens\":$LARGE_TOKENS,\"cache_capacity\":100000,\"db_mib\":$(du -m "$DB3" | cut -f1)}"
    else
      fail large_db_verify_cycling "$bad verifications were not valid"
    fi
  else
    fail large_db_verify_cycling "$ALT_ERR"
  fi
  stop_pid "$LK_PID"
fi
BASE_RSS=$(rss_mib "$BASE_PID")
BARE_RSS=$(rss_mib "$BARE_PID")

# --- Instruction count of one warm verify -----------------------------------------------------
INSTR=null
if [ "$CALLGRIND" = 1 ]; then
  cg() { # n -> sets CG to the instructions of the whole run
    CG=""
    # Only inside verify_count's hot_loop: the setup's cost varies from run to run. The pattern
    # has no trailing `*`: in a debug build hot_loop's async block is a function of its own
    # (`hot_loop::{{closure}}`), and matching it too would toggle collection off again.
    run_tracked "$TMP/callgrind-$1.err" valgrind --tool=callgrind --callgrind-out-file=/dev/null \
      --collect-atstart=no --toggle-collect='*hot_loop' "$BIN/examples/verify_count" "$1" ||
      { cat "$TMP/callgrind-$1.err" >&2; return 1; }
    CG=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$TMP/callgrind-$1.err" | head -n1)
    [ -n "$CG" ]
  }
  log "counting the instructions of warm verifies under callgrind"
  if cg 1000 && c1=$CG && cg 2000 && c2=$CG; then
    INSTR=$(( (c2 - c1) / 1000 ))
  else
    fail callgrind "valgrind run"
  fi
fi

# --- Instructions per whole request -----------------------------------------------------------
# A REST verify and a gateway check of a warm token through the whole server (HTTP parsing,
# routing, verification, answer), in Latchkey, in the baseline and in the bare server, counted by
# callgrind after a warm-up. Wall-clock figures move by 10-20 % between runs on a shared machine;
# these counts do not, so they are the figures to compare before and after a change.
REQ_LK=null; REQ_BASE=null; REQ_BARE=null
CHK_LK=null; CHK_BASE=null; CHK_BARE=null
if [ "$CALLGRIND" = 1 ]; then
  cg_server() { # name mode command...: sets CG_REQ to the server's instructions per request
    local name=$1 mode=$2 port pid total n THREADS=1 CONNS=4
    shift 2
    CG_REQ=""
    port=$(free_port) || return 1
    LATCHKEY_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$TMP/cg-$name-$mode.out" \
      "$@" --listen "127.0.0.1:$port" >"$TMP/cg-$name-$mode.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:$port/healthz" "$pid" 180 || { stop_pid "$pid"; return 1; }
    # Under valgrind a request's code is translated the first time it runs, which can outlast a
    # short warm-up (a debug build's gateway check did), so warm up until requests complete.
    local tries=0
    until wrk_run "http://127.0.0.1:$port" "$mode" "$TMP/warm.txt" $(( WARMUP > 0 ? WARMUP : 1 )) && sane "$J"; do
      tries=$(( tries + 1 ))
      [ "$tries" -lt 5 ] || { stop_pid "$pid"; return 1; }
    done
    callgrind_control -z "$pid" >/dev/null 2>&1 &&
      wrk_run "http://127.0.0.1:$port" "$mode" "$TMP/warm.txt" "$DURATION" && sane "$J" &&
      n=$(num requests "$J") && callgrind_control -d "$pid" >/dev/null 2>&1 &&
      total=$(sed -n 's/^summary: //p' "$TMP/cg-$name-$mode.out.1" 2>/dev/null) || { stop_pid "$pid"; return 1; }
    stop_pid "$pid"
    [ -n "$total" ] && [ "${n%.*}" -gt 0 ] || return 1
    CG_REQ=$(( total / ${n%.*} ))
  }
  log "counting the instructions of whole REST verify and gateway check requests under callgrind"
  latchkey_serve "$DB1" sha256 1000
  if cg_server latchkey verify "${LK_SERVE[@]}" && REQ_LK=$CG_REQ &&
     cg_server baseline verify "$BIN/examples/baseline" && REQ_BASE=$CG_REQ &&
     cg_server bare verify "$BIN/examples/bare" && REQ_BARE=$CG_REQ; then
    log "instructions per REST verify request: latchkey $REQ_LK, baseline $REQ_BASE, bare $REQ_BARE"
  else
    REQ_LK=null; REQ_BASE=null; REQ_BARE=null
    fail callgrind_request "valgrind run of a server"
  fi
  if cg_server latchkey check "${LK_SERVE[@]}" && CHK_LK=$CG_REQ &&
     cg_server baseline check "$BIN/examples/baseline" && CHK_BASE=$CG_REQ &&
     cg_server bare check "$BIN/examples/bare" && CHK_BARE=$CG_REQ; then
    log "instructions per gateway check request: latchkey $CHK_LK, baseline $CHK_BASE, bare $CHK_BARE"
  else
    CHK_LK=null; CHK_BASE=null; CHK_BARE=null
    fail callgrind_check_request "valgrind run of a server"
  fi
fi

# --- Report -------------------------------------------------------------------------------------
COMMAND="bash bench/run.sh${ARGS:+ $ARGS}"
{
  echo
  printf '%-26s %9s %8s %8s %10s %6s %8s  %-31s %s\n' scenario 'req/s' 'p50 ms' 'p99 ms' 'base req/s' ratio 'RSS MiB' target met
  for r in "${ROWS[@]}"; do
    IFS='|' read -r name rps p50 p99 brps bp99 rss target met xrps xp99 xtarget xmet extra <<<"$r"
    if [ -n "$brps" ]; then rt=$(ratio "$rps" "$brps"); brps=$(printf '%.0f' "$brps"); else rt=-; brps=-; fi
    printf '%-26s %9.0f %8s %8s %10s %6s %8s  %-31s %s\n' "$name" "$rps" "$(ms "$p50")" "$(ms "$p99")" \
      "$brps" "$rt" "$rss" "$target" "$met"
  done
  echo
  # The same scenarios against the bare server (examples/bare.rs), measured in the same rounds.
  BARE_HEAD=0
  for r in "${ROWS[@]}"; do
    IFS='|' read -r name rps p50 p99 brps bp99 rss target met xrps xp99 xtarget xmet extra <<<"$r"
    [ -n "$xrps" ] || continue
    if [ "$BARE_HEAD" = 0 ]; then
      printf '%-26s %9s %8s %10s %10s %10s %10s  %-20s %s\n' 'against bare' 'req/s' 'p99 ms' 'bare req/s' 'bare p99' 'ratio bare' 'ratio base' target met
      BARE_HEAD=1
    fi
    if [ -n "$brps" ]; then rt=$(ratio "$rps" "$brps"); else rt=-; fi
    printf '%-26s %9.0f %8s %10.0f %10s %10s %10s  %-20s %s\n' "$name" "$rps" "$(ms "$p99")" "$xrps" "$(ms "$xp99")" \
      "$(ratio "$rps" "$xrps")" "$rt" "$xtarget" "$xmet"
  done
  [ "$BARE_HEAD" = 0 ] || echo
  for l in "${NOTES[@]}"; do echo "$l"; done
  [ ${#NOTES[@]} -eq 0 ] || echo
  echo "instructions per warm verify (callgrind, in-process Authority::verify): $INSTR"
  echo "instructions per REST verify request (callgrind, whole server): latchkey $REQ_LK, baseline $REQ_BASE, bare $REQ_BARE"
  echo "instructions per gateway check request (callgrind, whole server): latchkey $CHK_LK, baseline $CHK_BASE, bare $CHK_BARE"
  echo "baseline server peak RSS: $BASE_RSS MiB; bare server: $BARE_RSS MiB; machine: $MACHINE"
  echo "command: $COMMAND (tokens $TOKENS; $CONNS connections; ${WARMUP}s warm-up + ${DURATION}s per measurement; best of $ROUNDS; wrk -t$THREADS; $CPU_LAYOUT)"
  [ "$BUSY_STARTS" = 0 ] || echo "warning: $BUSY_STARTS measurement(s) started while other processes kept the CPU busy"
  [ ${#FAILED[@]} -eq 0 ] || echo "could not run: ${FAILED[*]}"
  [ ${#MISSED[@]} -eq 0 ] || echo "targets missed: ${MISSED[*]}"
}

json_list() { local s="" x; for x in "$@"; do s="$s${s:+,}\"$x\""; done; echo "$s"; }
mkdir -p bench/results
{
  printf '{\n  "generated_at": "%s",\n  "mode": "%s",\n  "command": "%s",\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$MODE" "$COMMAND"
  printf '  "machine": {"cores": %d, "cpu": "%s", "memory_gib": %s},\n' "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //; s/"/\\"/g')" \
    "$(awk '/MemTotal/ { printf "%.1f", $2 / 1048576 }' /proc/meminfo)"
  large=$LARGE_TOKENS; [ "$SKIP_LARGE" = 0 ] || large=null
  printf '  "settings": {"tokens": %d, "large_tokens": %s, "connections": %d, "wrk_threads": %d, "warmup_seconds": %d, "duration_seconds": %d, "rounds": %d, "cycling_cache_capacity": %d, "argon2id_tokens": %d, "cpu_layout": "%s"},\n' \
    "$TOKENS" "$large" "$CONNS" "$THREADS" "$WARMUP" "$DURATION" "$ROUNDS" "$CYCLE_CACHE" "$ARGON_TOKENS" "$CPU_LAYOUT"
  printf '  "instructions_per_warm_verify": %s,\n  "baseline_peak_rss_mib": %s,\n  "bare_peak_rss_mib": %s,\n' "$INSTR" "${BASE_RSS:-null}" "${BARE_RSS:-null}"
  printf '  "instructions_per_rest_verify_request": {"latchkey": %s, "baseline": %s, "bare": %s},\n' "$REQ_LK" "$REQ_BASE" "$REQ_BARE"
  printf '  "instructions_per_auth_check_request": {"latchkey": %s, "baseline": %s, "bare": %s},\n' "$CHK_LK" "$CHK_BASE" "$CHK_BARE"
  printf '  "busy_machine": {"waited": %d, "measured_while_busy": %d},\n' "$BUSY_WAITS" "$BUSY_STARTS"
  printf '  "scenarios": [\n'
  n=0
  for r in "${ROWS[@]}"; do
    IFS='|' read -r name rps p50 p99 brps bp99 rss target met xrps xp99 xtarget xmet extra <<<"$r"
    [ $n -eq 0 ] || printf ',\n'
    n=$((n + 1))
    if [ -n "$brps" ]; then rt=$(ratio "$rps" "$brps"); bj=$brps; bp=$(ms "$bp99"); else rt=null; bj=null; bp=null; fi
    mj=false; [ "$met" = yes ] && mj=true; [ "$met" = - ] && mj=null
    if [ -n "$xrps" ]; then xr=$(ratio "$rps" "$xrps"); xj=$xrps; xp=$(ms "$xp99"); xt="\"$xtarget\""
      xm=false; [ "$xmet" = yes ] && xm=true
    else xr=null; xj=null; xp=null; xt=null; xm=null; fi
    printf '    {"scenario": "%s", "requests_per_second": %s, "p50_ms": %s, "p99_ms": %s, "baseline_requests_per_second": %s, "baseline_p99_ms": %s, "ratio_to_baseline": %s, "bare_requests_per_second": %s, "bare_p99_ms": %s, "ratio_to_bare": %s, "target_bare": %s, "met_bare": %s, "server_peak_rss_mib": %s, "target": "%s", "met": %s, "details": %s}' \
      "$name" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$bj" "$bp" "$rt" "$xj" "$xp" "$xr" "$xt" "$xm" "$rss" "$target" "$mj" "$extra"
  done
  printf '\n  ],\n  "could_not_run": [%s],\n  "targets_missed": [%s]\n}\n' \
    "$(json_list "${FAILED[@]}")" "$(json_list "${MISSED[@]}")"
} >bench/results/latest.json
log "wrote bench/results/latest.json"

[ ${#FAILED[@]} -eq 0 ] || exit 1
[ "$ENFORCE" = 0 ] || [ ${#MISSED[@]} -eq 0 ] || exit 3
exit 0
