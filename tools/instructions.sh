#!/usr/bin/env bash
# Instructions per request of a data-plane binary under callgrind, case by case, and the CI
# guard over them. Each case starts its own gateway (one Tokio worker) on the bench's plain
# config with its 1 KB chat request, warms it, zeroes the counters, sends REQUESTS requests on
# one keep-alive connection and subtracts an idle interval of the same length:
#
#   plain      whole answer, access log off
#   logged     whole answer, access log on (the default: one JSON line per request, to a file)
#   stream     a stream of 8 chunks, access log off
#   limits     whole answer on a key and route with RPM, TPM, parallel limits and a budget,
#              the counters in a real redis-server (skipped without /usr/bin/redis-server)
#   traced     whole answer, every request traced (100% sampling) to a real OpenTelemetry
#              Collector over OTLP/gRPC (skipped when tests/otelcol/build.sh cannot build it);
#              the span export runs within the measured window
#
# usage: tools/instructions.sh DATA_PLANE MOCK_LLM [--check FILE | --update FILE] [REQUESTS]
#
# Without --check or --update it prints the counts: run it on two builds to compare trees.
#
# --check FILE fails when a case costs more than 3% over FILE's count (the guard CI runs);
# a change that is worth it updates FILE in the same commit (--update), its commit message
# saying why. Counts below FILE's by more than 3% are reported, so the baseline can be
# tightened. FILE holds a section per CPU model; on a CPU it has no section for, the counts
# are only reported.
#
# INSTRUCTIONS_CASES="plain traced" runs only those cases (printing only, not with --check or
# --update).
#
# With INSTRUCTIONS_PROFILE=DIR set, each case's measured callgrind dump is kept as
# DIR/NAME.out.N for callgrind_annotate (--inclusive=yes shows where a request's work goes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dp=$(realpath "$1")
mock=$(realpath "$2")
mode=print
file=
case "${3:-}" in
  --check | --update)
    mode=${3#--}
    file=$4
    shift 4
    ;;
  *) shift 2 ;;
esac
n=${1:-300}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
# The model without its clock ("... @ 2.80GHz"): the clock does not change the counts.
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2 | xargs | sed 's/ *@ .*$//')

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(port)
"$mock" --listen "127.0.0.1:$mock_port" --workers 1 >"$work/mock.log" 2>&1 &
pids+=($!)

mkdir -p "$work/cfg"
cat >"$work/cfg/bench.yaml" <<EOF
apiVersion: v1
kind: Secret
metadata: {name: bench}
stringData: {key: sk-bench-key-000001, upstream: sk-upstream}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: mock}
spec:
  provider: openai
  endpoints: [{url: "http://127.0.0.1:$mock_port/v1", credentialSecretRef: {name: bench, key: upstream}}]
  models: [{name: mock-gpt}, {name: gpt-4o-mini, inputPricePerMillion: "0.15", outputPricePerMillion: "0.60"}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: bench}
spec: {models: [bench], backends: [{pool: mock, model: mock-gpt}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: bench}
spec: {secretRef: {name: bench}}
---
apiVersion: v1
kind: Secret
metadata: {name: limited}
stringData: {key: sk-bench-limited-000001}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: limited}
spec:
  models: [limited]
  backends: [{pool: mock, model: gpt-4o-mini}]
  limits: {requestsPerMinute: 1000000000}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {name: limited}
spec:
  secretRef: {name: limited}
  limits: {requestsPerMinute: 1000000000, tokensPerMinute: 1000000000000, maxParallelRequests: 100000}
  budget: {amount: "1000000000", period: Monthly}
EOF

# Sends REQUESTS requests on one keep-alive connection; prints the seconds it took.
drive() {
  python3 - "$api_port" "$1" "$2" "$3" "$4" <<'PY'
import http.client, json, sys, time
port, n, stream, model, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "stream", sys.argv[4], sys.argv[5]
filler = "The quick brown fox jumps over the lazy dog. " * 18
body = json.dumps({"model": model, "messages": [
    {"role": "system", "content": filler},
    {"role": "user", "content": "Summarise the above. mock.chunks=8"}],
    "stream": stream, "max_tokens": 64})
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
t = time.time()
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {
        "authorization": "Bearer " + key, "content-type": "application/json"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, (r.status, r.read())
print(time.time() - t)
PY
}

# Instructions since the last zeroing (callgrind_control dumps; the totals are summed).
measure() {
  rm -f "$work"/cg.*.[0-9]*
  callgrind_control -d "$vg" >/dev/null
  sleep 1
  local total=0
  for f in "$work"/cg.*.[0-9]*; do
    local t
    t=$(grep -E '^(summary|totals):' "$f" | head -1 | awk '{print $2}')
    total=$((total + ${t:-0}))
  done
  echo "$total"
}

# run_case NAME whole|stream MODEL KEY SETTLE_SECONDS [GATEWAY FLAGS...]: one gateway under
# callgrind; prints "NAME COUNT".
run_case() {
  local name=$1 shape=$2 model=$3 key=$4 settle=$5
  shift 5
  api_port=$(port)
  local admin_port
  admin_port=$(port)
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
    "$dp" --config "$work/cfg" --listen "127.0.0.1:$api_port" --admin-listen "127.0.0.1:$admin_port" \
    "$@" >"$work/dp-$name.log" 2>&1 &
  vg=$!
  pids+=($vg)
  local ready=
  for _ in $(seq 1 300); do
    curl -sf "127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && { ready=1; break; }
    sleep 1
  done
  [ -n "$ready" ] || { echo "$name: the gateway did not become ready" >&2; tail -20 "$work/dp-$name.log" >&2; exit 1; }
  drive 50 "$shape" "$model" "$key" >/dev/null
  sleep "$settle"
  callgrind_control -z "$vg" >/dev/null
  local secs busy idle
  secs=$(drive "$n" "$shape" "$model" "$key")
  # Work the requests left behind (a span batch, a settlement) lands in the window.
  sleep "$settle"
  busy=$(measure)
  if [ -n "${INSTRUCTIONS_PROFILE:-}" ]; then
    mkdir -p "$INSTRUCTIONS_PROFILE"
    for f in "$work"/cg.*.[0-9]*; do cp "$f" "$INSTRUCTIONS_PROFILE/$name.out.${f##*.}"; done
  fi
  callgrind_control -z "$vg" >/dev/null
  python3 -c "import time; time.sleep($secs + $settle)"
  idle=$(measure)
  kill "$vg" 2>/dev/null || true
  wait "$vg" 2>/dev/null || true
  rm -f "$work"/cg.*
  echo "$name $(((busy - idle) / n))"
}

want() { [ -z "${INSTRUCTIONS_CASES:-}" ] || [[ " $INSTRUCTIONS_CASES " == *" $1 "* ]]; }
[ -z "${INSTRUCTIONS_CASES:-}" ] || [ "$mode" = print ] || { echo "INSTRUCTIONS_CASES is for printing only" >&2; exit 2; }
results=()
want plain && results+=("$(run_case plain whole bench sk-bench-key-000001 0 --access-log off)")
want logged && results+=("$(run_case logged whole bench sk-bench-key-000001 0 --access-log "$work/access.log")")
want stream && results+=("$(run_case stream stream bench sk-bench-key-000001 0 --access-log off)")
if ! want limits; then
  :
elif [ -x /usr/bin/redis-server ]; then
  redis_port=$(port)
  /usr/bin/redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
  pids+=($!)
  sleep 0.5
  results+=("$(run_case limits whole limited sk-bench-limited-000001 1 --access-log off --redis-url "redis://127.0.0.1:$redis_port")")
else
  echo "limits: skipped (no /usr/bin/redis-server)" >&2
fi
if ! want traced; then
  :
elif otelcol=$(bash "$root/tests/otelcol/build.sh" 2>"$work/otelcol-build.log") && [ -x "$otelcol" ]; then
  grpc=$(port)
  cat >"$work/otelcol.yaml" <<EOF
receivers:
  otlp:
    protocols:
      grpc: {endpoint: 127.0.0.1:$grpc}
exporters:
  debug: {verbosity: basic}
service:
  telemetry: {metrics: {level: none}}
  pipelines:
    traces: {receivers: [otlp], exporters: [debug]}
EOF
  "$otelcol" --config="file:$work/otelcol.yaml" >"$work/otelcol.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 300); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $grpc), 1)" 2>/dev/null && break
    sleep 0.1
  done
  results+=("$(run_case traced whole bench sk-bench-key-000001 2 --access-log off \
    --otlp-endpoint "http://127.0.0.1:$grpc" --trace-sample-ratio 1 --otlp-metrics-interval 0s)")
else
  echo "traced: skipped (the collector could not be built)" >&2
fi

printf '%s\n' "${results[@]}"
case "$mode" in
  print) ;;
  update)
    # This CPU's section is replaced; the other machines' sections stay.
    {
      echo "# Instructions per request (tools/instructions.sh, release build, $n requests a case),"
      echo "# one section per CPU model (counts differ between CPUs, not between runs on one)."
      echo "# CI fails when a case costs more than 3% over its count for the CPU it runs on; a"
      echo "# change worth that updates this file in the same commit, its message saying why."
      [ -f "$file" ] && awk -v c="$cpu" '
        /^cpu / { keep = (substr($0, 5) != c) }
        /^#/ { next }
        keep && NF { print }' "$file"
      echo "cpu $cpu"
      printf '%s\n' "${results[@]}"
    } >"$file.new"
    mv "$file.new" "$file"
    echo "baseline written for '$cpu': $file"
    ;;
  check)
    # This CPU's section of FILE.
    section=$(awk -v c="$cpu" '/^cpu / { mine = (substr($0, 5) == c); next } mine' "$file")
    if [ -z "$section" ]; then
      echo "no baseline for '$cpu' in $file: counts reported, not enforced (record one with --update)" >&2
    fi
    failed=0
    for r in "${results[@]}"; do
      read -r name count <<<"$r"
      base=$(awk -v n="$name" '$1 == n { print $2 }' <<<"$section")
      if [ -z "$base" ]; then
        echo "$name: $count (no baseline yet: add it with --update)"
        continue
      fi
      pct=$(python3 -c "print(f'{($count - $base) * 100 / $base:+.1f}')")
      if [ "$count" -gt $((base * 103 / 100)) ]; then
        echo "$name: $count against a baseline of $base ($pct%): more than 3% over"
        failed=1
      elif [ "$count" -lt $((base * 97 / 100)) ]; then
        echo "$name: $count against $base ($pct%): cheaper; tighten the baseline with --update"
      else
        echo "$name: $count against $base ($pct%)"
      fi
    done
    if [ "$failed" = 1 ]; then
      echo "instructions per request rose by more than 3%: find why, or update $file with the reason in the commit message" >&2
      exit 1
    fi
    ;;
esac
