#!/usr/bin/env bash
# Long runs of the property tests of everything that parses input: the token format, scope names
# and the scope registry, stored verifiers, the config file and `serve` flags, the client-IP rule
# and the other header readers (unit tests in src/token/, src/edge.rs, src/config.rs), and the
# JSON bodies, query strings, paging cursors and gateway scope lists (tests/api/properties.rs,
# the last three over HTTP against the real server).
#
# `cargo test` runs the same tests with 256 cases each (48 for the HTTP ones), a few seconds in
# all; this script runs them with many more.
#
#   bash bench/fuzz.sh                      # 100,000 cases per property, 2,000 per HTTP one
#                                           # (about 10 minutes on 2 cores, debug build)
#   bash bench/fuzz.sh --cases 10000        # a shorter run (about a minute on 2 cores)
#   bash bench/fuzz.sh --http-cases 20000   # more requests per HTTP property
#   bash bench/fuzz.sh --release            # optimised build: more cases per minute, but a
#                                           # build of its own the first time
#   bash bench/fuzz.sh --only token::format # one group (a filter of the unit tests; the
#                                           # HTTP ones are left out)
#
# Each run starts from a fresh random seed, so a longer or repeated run explores more.
# A failure prints the minimal input proptest shrank it to and exits non-zero. The unit tests'
# failing seeds are saved under proptest-regressions/ (by source path; keep them: the next
# `cargo test` replays them first); the HTTP ones print theirs only.
# Environment: PROPTEST_CASES and LATCHKEY_HTTP_PROPTEST_CASES are what the options set.
set -euo pipefail

cd "$(dirname "$0")/.."

cases=100000
http_cases=2000
profile=()
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cases) cases="$2"; shift 2 ;;
        --http-cases) http_cases="$2"; shift 2 ;;
        --release) profile=(--release); shift ;;
        --only) only="$2"; shift 2 ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

export PROPTEST_CASES="$cases"
export LATCHKEY_HTTP_PROPTEST_CASES="$http_cases"
# Some properties discard a few inputs (prop_assume); allow as many as there are cases.
export PROPTEST_MAX_GLOBAL_REJECTS="$cases"
export PROPTEST_MAX_LOCAL_REJECTS="$cases"

start=$(date +%s)
status=0
echo "== unit properties: $cases cases each"
if [ -n "$only" ]; then
    filters=("$only")
else
    filters=(token:: edge::properties config::tests)
fi
cargo test "${profile[@]}" --lib -- "${filters[@]}" || status=1

if [ -z "$only" ]; then
    echo "== API properties: $cases cases each at the type level, $http_cases per HTTP property"
    cargo test "${profile[@]}" --test api properties:: || status=1
fi

echo "== done in $(( $(date +%s) - start )) s: $([ $status = 0 ] && echo 'no failure' || echo 'FAILURES above')"
exit $status
