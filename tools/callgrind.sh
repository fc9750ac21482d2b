#!/usr/bin/env bash
# Instructions per request of a data-plane binary on the bench's plain route (whole answer
# and stream of 8 chunks), under callgrind: the bench config and its 1 KB chat request, the
# access log off, one Tokio worker, REQUESTS requests per case on one keep-alive connection
# after a warm-up; counters zeroed before each case and an idle interval of the same length
# subtracted. Compare two trees by running it on both binaries (docs/performance.md).
#
# usage: tools/callgrind.sh DATA_PLANE_BINARY MOCK_LLM_BINARY [REQUESTS]
set -euo pipefail
dp=$(realpath "$1")
mock=$(realpath "$2")
n=${3:-300}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(port)
api_port=$(port)
admin_port=$(port)
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
  models: [{name: mock-gpt}]
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
EOF

TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
  "$dp" --config "$work/cfg" --listen "127.0.0.1:$api_port" --admin-listen "127.0.0.1:$admin_port" \
  --access-log off >"$work/dp.log" 2>&1 &
vg=$!
pids+=($vg)
for _ in $(seq 1 300); do
  curl -sf "127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
  sleep 1
done

# Sends REQUESTS requests on one keep-alive connection; prints the seconds it took.
drive() {
  python3 - "$api_port" "$1" "$2" <<'PY'
import http.client, json, sys, time
port, n, stream = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "stream"
filler = "The quick brown fox jumps over the lazy dog. " * 18
body = json.dumps({"model": "bench", "messages": [
    {"role": "system", "content": filler},
    {"role": "user", "content": "Summarise the above. mock.chunks=8"}],
    "stream": stream, "max_tokens": 64})
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
t = time.time()
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body, {
        "authorization": "Bearer sk-bench-key-000001", "content-type": "application/json"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
print(time.time() - t)
PY
}

# Instructions since the last zeroing (callgrind_control dumps, we sum the totals).
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

drive 50 whole >/dev/null
drive 20 stream >/dev/null
for mode in whole stream; do
  callgrind_control -z "$vg" >/dev/null
  secs=$(drive "$n" "$mode")
  busy=$(measure)
  callgrind_control -z "$vg" >/dev/null
  sleep "$secs"
  idle=$(measure)
  echo "$mode: $(( (busy - idle) / n )) instructions per request (busy $busy, idle $idle, ${secs}s)"
done
