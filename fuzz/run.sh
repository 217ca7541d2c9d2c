#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time each.
#
#   fuzz/run.sh                       # all targets, 60 s each
#   FUZZ_SECONDS=600 fuzz/run.sh redact
#   FUZZ_ARGS="-jobs=2 -workers=2" fuzz/run.sh jsonl_entry
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_TOOLCHAIN  rustup toolchain to build with (default: nightly if
#                   installed, else stable with RUSTC_BOOTSTRAP=1)
#   FUZZ_ARGS       extra libFuzzer arguments
#
# cargo fuzz needs a nightly compiler (it passes -Zsanitizer=address and other
# -Z flags). Without one, stable is used with RUSTC_BOOTSTRAP=1, which makes
# stable accept -Z flags: the stable toolchain ships the sanitizer runtimes.
# Corpora grow under fuzz/corpus/<target>/, crashes land in
# fuzz/artifacts/<target>/; both are git-ignored, as is fuzz/target/.
# Exits non-zero if any target found a crash (or failed to build).
set -euo pipefail

cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
all_targets=(jsonl_entry config_url classify_inbound redact)
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=("${all_targets[@]}")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

toolchain="${FUZZ_TOOLCHAIN:-}"
if [ -z "$toolchain" ]; then
    if rustup run nightly rustc --version >/dev/null 2>&1; then
        toolchain=nightly
    else
        toolchain=stable
    fi
fi
if ! rustup run "$toolchain" rustc --version 2>/dev/null | grep -q nightly; then
    # Not a nightly: let it accept the -Z flags cargo fuzz passes.
    export RUSTC_BOOTSTRAP=1
fi
echo "== toolchain: $(rustup run "$toolchain" rustc --version)${RUSTC_BOOTSTRAP:+ with RUSTC_BOOTSTRAP=1}"

# Seeds and dictionaries: written once, into the git-ignored corpus folder.
seed() { # target name content
    local dir="fuzz/corpus/$1"
    mkdir -p "$dir"
    [ -e "$dir/seed-$2" ] || printf '%s' "$3" >"$dir/seed-$2"
}
dict() { # target tokens... (in libFuzzer's escapes: \\ and \xAB; quotes are escaped here)
    local file="fuzz/corpus/$1.dict"
    shift
    : >"$file"
    for token in "$@"; do
        printf '"%s"\n' "${token//\"/\\\"}" >>"$file"
    done
}

ts='"ts":"2026-12-02T00:31:07.123456Z"'
seed jsonl_entry text "{$ts,\"dir\":\"in\",\"type\":\"text\",\"data\":\"{\\\"price\\\":1}\",\"conn\":3}"
seed jsonl_entry binary "{$ts,\"dir\":\"out\",\"type\":\"binary\",\"data\":\"AAEC/w==\"}"
seed jsonl_entry close "{$ts,\"dir\":\"in\",\"type\":\"close\",\"code\":1000,\"reason\":\"bye\"}"
seed jsonl_entry zen-close "{\"ts\":\"2026-12-02T00:31:07Z\",\"dir\":\"in\",\"type\":\"close\",\"data\":\"{\\\"code\\\":1000,\\\"reason\\\":\\\"x\\\"}\"}"
seed jsonl_entry file "{$ts,\"dir\":\"sys\",\"type\":\"connected\",\"url\":\"wss://h/ws\"}
{$ts,\"type\":\"reconnecting\",\"attempt\":2,\"delay_ms\":1500}
not json
{$ts,\"dir\":\"in\",\"type\":\"text\",\"data\":\"x\",\"binary\":true}
{$ts,\"dir\":\"in\",\"type\":\"te"
dict jsonl_entry '"ts":' '"dir":' '"type":' '"data":' '"code":' '"reason":' '"url":' \
    '"cause":' '"attempt":' '"delay_ms":' '"conn":' '"binary":true' '"in"' '"out"' '"sys"' \
    '"text"' '"binary"' '"close"' '"connected"' '"disconnected"' '"reconnecting"' \
    '"reconnected"' '2026-12-02T00:31:07' '.123456789' 'Z' '+05:30' '\\n' '\\u00'

seed config_url plain 'wss://api.example.com:443/ws/v2?a=1&b=2'
seed config_url v6 'ws://[::1]:9001/?x=y
Authorization: Bearer abc
X-Client:zen'
seed config_url bad 'ws://user:pw@host:99999/a b#frag
Bad Name: x
X: a
b'
dict config_url 'ws://' 'wss://' 'WS://' '[' ']' '::1' ':' '@' '/' '?' '#' '%' ':0' ':65535' \
    ':65536' '\x0d\x0a' '\x00' 'Authorization' ': '

seed classify_inbound response '{"jsonrpc":"2.0","id":7,"result":["ticker.BTC-PERPETUAL.raw"]}'
seed classify_inbound error '{"jsonrpc":"2.0","id":9,"error":{"code":10028,"message":"too_many_requests","data":{"retry_after":2.5}}}'
seed classify_inbound batch '[{"id":1,"result":1},{"id":"a","error":"bare"},{"id":null,"result":0},5]'
seed classify_inbound heartbeat '{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}'
seed classify_inbound reply '{"jsonrpc":"2.0","id":0,"result":{"version":"1.2.26"}}'
seed classify_inbound subscription '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"book.BTC","data":{"bids":[[1,2]]}}}'
dict classify_inbound '"jsonrpc":"2.0"' '"id":' '"result":' '"error":' '"code":' '"message":' \
    '"msg":' '"data":' '"method":' '"params":' '"channel":' '"type":' '"heartbeat"' \
    '"test_request"' '"subscription"' '"retry_after":' '"reason":' '10028' '13009' '-32601' \
    'null' 'true' '1e300' '-0' '18446744073709551616'

seed redact json '{"params":{"client_secret":"s3cr3t","API-KEY":"k","list":[{"Token":{"deep":1}}]},"url":"wss://h/ws?token=t&x=1"}'
seed redact text 'client_id=abc&client_secret=xyz&grant_type=client_credentials Authorization: Bearer a.b.c'
seed redact escaped '{"data":"{\"token\":\"T0K\"}","\u0074oken":"x"}'
seed redact extra-key '1session.id
{"session.id":"abc","x":"session.id=abc"}'
dict redact 'token' 'access_token' 'client_secret' 'api_key' 'apiKey' 'API-KEY' 'password' \
    'secret' 'signature' 'passphrase' 'auth' 'authorization' '=' ': ' '"token":' '\\"' \
    'Bearer ' 'Basic ' '[REDACTED]' '\\u0074' '?token=' '&' '://u:p@'

status=0
results=()
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    echo "== $target: ${seconds}s"
    log="fuzz/artifacts/$target/last-run.log"
    dict_args=()
    if [ -f "fuzz/corpus/$target.dict" ]; then
        dict_args=("-dict=fuzz/corpus/$target.dict")
    fi
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of words
    if cargo "+$toolchain" fuzz run "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        "${dict_args[@]}" ${FUZZ_ARGS:-} 2>&1 | tee "$log"; then
        outcome=ok
    else
        outcome="FAILED (see $log and fuzz/artifacts/$target/)"
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    per_second=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    results+=("$target: $outcome; ${runs:-?} runs, ${per_second:-?} exec/s, ${cov:-cov: ?}")
done
# The jsonl_entry target's scratch files (one per fuzzing process).
rm -f /dev/shm/zen-fuzz-jsonl-*.jsonl "${TMPDIR:-/tmp}"/zen-fuzz-jsonl-*.jsonl

echo "== summary"
printf '%s\n' "${results[@]}"
exit "$status"
