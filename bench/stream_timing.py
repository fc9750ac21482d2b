"""Times streamed chat completions the way a client sees them, on one keep-alive connection:
the time to the first read that holds generated text ("tok"), and the time per chunk after
it (the last byte's time less the first token's, over the chunks after the first).

Called by `cargo xtask bench` (scenario c and h). A plain socket client: its per-read cost is
a few microseconds and the same for every target, where the bench's own Rust client is a
debug build (xtask) whose per-frame cost would dominate what it measures.

usage: stream_timing.py URL AUTH|- REQUESTS CHUNKS MODEL   -> prints "TTFT_P50_US GAP_US"
"""
import json
import socket
import sys
import time
from urllib.parse import urlsplit

url, auth, n, chunks, model = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
u = urlsplit(url)
filler = "The quick brown fox jumps over the lazy dog. " * 18
body = json.dumps({
    "model": model,
    "messages": [
        {"role": "system", "content": filler},
        {"role": "user", "content": f"Summarise the above. mock.chunks={chunks}"},
    ],
    "stream": True,
    "max_tokens": 64,
}).encode()
head = (
    f"POST {u.path} HTTP/1.1\r\nhost: {u.netloc}\r\ncontent-type: application/json\r\n"
    f"content-length: {len(body)}\r\n"
    + (f"authorization: {auth}\r\n" if auth != "-" else "")
    + "\r\n"
).encode()

s = socket.create_connection((u.hostname, u.port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ttfts, per_chunk = [], []
for _ in range(n):
    t0 = time.perf_counter()
    s.sendall(head + body)
    buf, first = b"", None
    while not buf.endswith(b"\r\n0\r\n\r\n"):
        d = s.recv(1 << 16)
        if not d:
            sys.exit("connection closed mid-stream: " + buf[:300].decode(errors="replace"))
        buf += d
        if first is None and b"tok" in buf:
            first = time.perf_counter()
    end = time.perf_counter()
    if not buf.startswith(b"HTTP/1.1 200") or first is None:
        sys.exit("unexpected answer: " + buf[:300].decode(errors="replace"))
    ttfts.append((first - t0) * 1e6)
    per_chunk.append((end - first) * 1e6 / max(chunks - 1, 1))
ttfts.sort()
print(f"{ttfts[len(ttfts) // 2]:.1f} {sum(per_chunk) / len(per_chunk):.2f}")
