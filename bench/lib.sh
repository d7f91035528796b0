# shellcheck shell=bash
# Helpers shared by bench/run.sh and bench/postgres.sh (sourced, not run).

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
