#!/usr/bin/env bash
# Smoke test of a built QuantDesk: the one-folder executable or the AppImage.
#
#   bash packaging/smoke_test.sh dist/QuantDesk/quantdesk
#   bash packaging/smoke_test.sh dist/QuantDesk-x86_64.AppImage
#
# Every step runs the artefact with an empty environment (env -i: PATH=/usr/bin:/bin, a fresh
# HOME, HF_HUB_OFFLINE=1, QT_QPA_PLATFORM=offscreen). As root (and unless
# QUANTDESK_SMOKE_ISOLATE=0) it also runs in its own network namespace with no network at
# all, and in its own mount namespace in which every python executable of the system is
# /dev/null and the build venv is an empty folder, so nothing can fall back on them.
#
# Steps: the window opens offscreen on a first run (the welcome is shown) and the cold start
# is timed (the artefact's files are evicted from the page cache first); the engine worker
# (the executable itself) quantizes the demo model with RTN W8; the result answers a chat
# prompt; the demo is converted to GGUF Q8_0 and answers through llama.cpp. Exit 0 when all
# pass. QUANTDESK_SMOKE_REPORT=FILE also writes the timings there as key=value lines.
set -euo pipefail

if [[ ${1:-} == --inner ]]; then
    shift
    inner=1
else
    inner=0
fi
APP=$(readlink -f "${1:?usage: smoke_test.sh PATH/TO/quantdesk-or-AppImage}")
[[ -x $APP ]] || { echo "smoke: $APP is not an executable file" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

if [[ $inner == 0 && $(id -u) == 0 && ${QUANTDESK_SMOKE_ISOLATE:-1} != 0 ]] \
        && unshare --mount --net true 2> /dev/null; then
    exec unshare --mount --net --propagation private bash "$HERE/smoke_test.sh" --inner "$APP"
fi

if [[ $inner == 1 ]]; then
    hidden=()
    for py in /usr/bin/python* /usr/local/bin/python* /bin/python*; do
        if [[ -f $py && ! -L $py ]] && mount --bind /dev/null "$py" 2> /dev/null; then
            hidden+=("$py")
        fi
    done
    if [[ -d $ROOT/.venv ]]; then
        mount -t tmpfs -o ro,size=1m none "$ROOT/.venv"
        hidden+=("$ROOT/.venv")
    fi
    echo "smoke: no network (own namespace; interfaces: $(awk -F: 'NR > 2 { printf "%s", $1 }' /proc/net/dev))"
    echo "smoke: hidden: ${hidden[*]:-nothing}"
fi

WORK=$(mktemp -d -t quantdesk-smoke-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
HOME_DIR=$WORK/home
mkdir -p "$HOME_DIR"

# Each step is killed after QUANTDESK_SMOKE_STEP_S seconds (default 900): a modal error box
# offscreen would otherwise wait forever. perl's alarm survives exec, on Linux and macOS.
app() {
    env -i PATH=/usr/bin:/bin HOME="$HOME_DIR" LANG=C.UTF-8 HF_HUB_OFFLINE=1 \
        QT_QPA_PLATFORM=offscreen \
        perl -e 'alarm shift; exec @ARGV or die "exec: $!"' "${QUANTDESK_SMOKE_STEP_S:-900}" \
        "$APP" "$@"
}

now() { perl -MTime::HiRes=time -e 'printf "%.3f", time'; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }
report=()
note() { report+=("$1=$2"); echo "smoke: $1 = $2"; }

[[ $(env -i PATH=/usr/bin:/bin sh -c 'command -v python3 || true') != "$ROOT/.venv/"* ]] \
    || fail "the build venv is on PATH"

version=$(app --version) || fail "--version"
echo "smoke: $version"

# Cold start: drop this artefact's pages from the page cache (only its own files; GNU dd).
if [[ $(uname) != Linux ]]; then
    echo "smoke: page cache not dropped on $(uname): the start below is warm"
elif [[ -d $(dirname "$APP")/_internal ]]; then
    find "$(dirname "$APP")" -type f -exec dd if={} iflag=nocache count=0 status=none \;
else
    dd if="$APP" iflag=nocache count=0 status=none
fi
t0=$(now)
out=$(app --smoke 2> "$WORK/smoke.err") || { cat "$WORK/smoke.err" >&2; fail "--smoke"; }
note cold_start_s "$(since "$t0")"
echo "$out"
[[ $out == *"visible=True"* ]] || fail "the window was not shown"
[[ $out == *"welcome=True"* ]] || fail "the first-run welcome was not shown"
[[ $out == *"data=$HOME_DIR/"* ]] || fail "user data is not under the user's home"
t0=$(now)
app --smoke > /dev/null 2>&1 || fail "second --smoke"
note warm_start_s "$(since "$t0")"

echo "smoke: quantize demo, RTN W8 (group 64), in the worker"
t0=$(now)
app quantize --model demo --method rtn --bits 8 --group-size 64 --samples 8 --seq-len 128 \
    --no-eval --worker --json --out "$WORK/rtn-w8" > "$WORK/events.jsonl" \
    2> "$WORK/quantize.err" || {
    tail -20 "$WORK/quantize.err" >&2
    tail -c 4000 "$WORK/events.jsonl" >&2
    fail "quantize"
}
note quantize_s "$(since "$t0")"
last=$(tail -n 1 "$WORK/events.jsonl")
[[ $last == *'"type": "result"'* || $last == *'"type":"result"'* ]] \
    || fail "the worker's last event is not a result: $last"
[[ -f $WORK/rtn-w8/model.safetensors && -f $WORK/rtn-w8/config.json ]] \
    || fail "no model in $WORK/rtn-w8"
grep -q '"bits": 8' "$WORK/rtn-w8/config.json" || fail "config.json does not say 8 bits"

echo "smoke: chat with the RTN W8 result"
t0=$(now)
reply=$(app chat "$WORK/rtn-w8" --prompt "What is the capital of France?" --max-tokens 12 \
    --temperature 0 2> "$WORK/chat.err") || { tail -20 "$WORK/chat.err" >&2; fail "chat"; }
note chat_s "$(since "$t0")"
echo "smoke: reply: $reply"
[[ -n ${reply//[[:space:]]/} ]] || fail "empty reply"

echo "smoke: demo to GGUF Q8_0, chat through llama.cpp"
t0=$(now)
app convert demo --type Q8_0 --out "$WORK/demo-q8_0.gguf" > /dev/null 2> "$WORK/convert.err" \
    || { tail -20 "$WORK/convert.err" >&2; fail "convert"; }
reply=$(app chat "$WORK/demo-q8_0.gguf" --prompt "What is the capital of France?" \
    --max-tokens 12 --temperature 0 2> "$WORK/gguf-chat.err") \
    || { tail -20 "$WORK/gguf-chat.err" >&2; fail "GGUF chat"; }
note gguf_convert_and_chat_s "$(since "$t0")"
echo "smoke: reply: $reply"
[[ -n ${reply//[[:space:]]/} ]] || fail "empty GGUF reply"

if [[ -n ${QUANTDESK_SMOKE_REPORT:-} ]]; then
    printf '%s\n' "${report[@]}" > "$QUANTDESK_SMOKE_REPORT"
fi
echo "smoke: OK ($version, $APP)"
