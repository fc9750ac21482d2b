"""Fixtures: the real gateway binaries (standalone data plane + mock upstream) on loopback."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SWITCHYARD_BIN_DIR") or Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug")
CLIENT_KEY = "sk-python-sdk-key-0001"
LIMITED_KEY = "sk-python-sdk-limited-01"
REDIS_SERVER = os.environ.get("REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"

# The upstream kinds every conformance test runs against: client-facing model -> kind.
UPSTREAMS = {
    "via-openai": "openai",
    "via-azure": "azure",
    "via-compat": "compat",
    "via-anthropic": "anthropic",
    "via-gemini": "gemini",
    "via-bedrock": "bedrock",
    "via-mock": "builtin",
}
# What the mock upstream accepts as AWS credentials (tests/src/mock/bedrock.rs).
AWS_ID, AWS_SECRET = "AKIAMOCKEXAMPLE00001", "mock/Secret+Key/EXAMPLE0000000000000000"

CONFIG = """
apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData: {{client: {client_key}, limited: {limited_key}, upstream: sk-upstream-for-sdk}}
---
apiVersion: v1
kind: Secret
metadata: {{name: aws}}
stringData: {{AWS_ACCESS_KEY_ID: {aws_id}, AWS_SECRET_ACCESS_KEY: "{aws_secret}"}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: azure}}
spec:
  provider: azure-openai
  azure: {{apiVersion: "2024-10-21"}}
  endpoints: [{{url: "{mock}", credentialSecretRef: {{name: keys, key: upstream}}}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: compat}}
spec:
  provider: openai-compatible
  endpoints: [{{url: "{mock}/v1", credentialSecretRef: {{name: keys, key: upstream}}}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: gemini}}
spec:
  provider: gemini
  endpoints: [{{url: "{mock}", credentialSecretRef: {{name: keys, key: upstream}}}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: bedrock}}
spec:
  provider: bedrock
  bedrock: {{region: us-east-1}}
  endpoints: [{{url: "{mock}", awsCredentialsSecretRef: {{name: aws}}}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: builtin}}
spec: {{provider: mock, models: [{{name: via-mock}}], mock: {{completionTokens: 3}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: via-openai}}
spec: {{models: [via-openai], backends: [{{pool: openai, model: mock-gpt}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: via-azure}}
spec: {{models: [via-azure], backends: [{{pool: azure, model: my-deployment}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: via-compat}}
spec: {{models: [via-compat], backends: [{{pool: compat, model: deepseek-reasoner}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: via-anthropic}}
spec: {{models: [via-anthropic], backends: [{{pool: anthropic, model: claude-sonnet-4-5}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: via-gemini}}
spec: {{models: [via-gemini, via-gemini-embed], backends: [{{pool: gemini, model: gemini-2.5-flash}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: via-bedrock}}
spec: {{models: [via-bedrock], backends: [{{pool: bedrock, model: "anthropic.claude-sonnet-4-5-20250929-v1:0"}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: via-mock}}
spec: {{models: [via-mock], backends: [{{pool: builtin}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: openai}}
spec:
  provider: openai
  endpoints: [{{url: "{mock}/v1", credentialSecretRef: {{name: keys, key: upstream}}}}]
  models: [{{name: mock-gpt}}, {{name: mock-embed}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: anthropic}}
spec:
  provider: anthropic
  endpoints: [{{url: "{mock}", credentialSecretRef: {{name: keys, key: upstream}}}}]
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: chat}}
spec: {{models: [gpt-4o-mini], backends: [{{pool: openai, model: mock-gpt}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: claude}}
spec: {{models: [claude-sonnet], backends: [{{pool: anthropic, model: claude-mock}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: embed}}
spec: {{models: [text-embedding-3-small], backends: [{{pool: openai, model: mock-embed}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {{name: slow}}
spec: {{provider: mock, models: [{{name: slow}}], mock: {{latency: 2500ms}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {{name: slow}}
spec: {{models: [slow], backends: [{{pool: slow}}]}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: sdk}}
spec: {{secretRef: {{name: keys, key: client}}}}
---
apiVersion: switchyard.dev/v1alpha1
kind: VirtualKey
metadata: {{name: limited}}
spec: {{secretRef: {{name: keys, key: limited}}, limits: {{maxParallelRequests: 1}}}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become ready")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def gateway():
    for name in ("switchyard-data-plane", "switchyard-mock-llm"):
        if not (BIN / name).exists():
            pytest.fail(f"{BIN / name} is missing: run `cargo build --workspace --bins` first")
    work = Path(tempfile.mkdtemp(prefix="switchyard-py-"))
    procs = []
    try:
        if not Path(REDIS_SERVER).exists():
            pytest.fail("redis-server is missing: apt-get install redis-server (or set REDIS_SERVER)")
        mock_port, api_port, admin_port, redis_port = free_port(), free_port(), free_port(), free_port()
        redis_log = open(work / "redis.log", "w")
        procs.append(subprocess.Popen(
            [REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
            stdout=redis_log, stderr=redis_log,
        ))
        mock_log = open(work / "mock.log", "w")
        procs.append(subprocess.Popen([BIN / "switchyard-mock-llm", "--listen", f"127.0.0.1:{mock_port}"], stdout=mock_log, stderr=mock_log))
        cfg = work / "config"
        cfg.mkdir()
        (cfg / "config.yaml").write_text(CONFIG.format(client_key=CLIENT_KEY, limited_key=LIMITED_KEY, mock=f"http://127.0.0.1:{mock_port}", aws_id=AWS_ID, aws_secret=AWS_SECRET))
        dp_log = open(work / "dp.log", "w")
        procs.append(subprocess.Popen(
            [BIN / "switchyard-data-plane", "--config", cfg, "--listen", f"127.0.0.1:{api_port}", "--admin-listen", f"127.0.0.1:{admin_port}",
             "--redis-url", f"redis://127.0.0.1:{redis_port}"],
            stdout=dp_log, stderr=dp_log,
        ))
        wait_http(f"http://127.0.0.1:{mock_port}/healthz")
        wait_http(f"http://127.0.0.1:{admin_port}/readyz")
        yield {"base_url": f"http://127.0.0.1:{api_port}/v1", "key": CLIENT_KEY, "limited_key": LIMITED_KEY,
               "mock": f"http://127.0.0.1:{mock_port}", "admin": f"http://127.0.0.1:{admin_port}"}
    finally:
        for p in procs:
            p.kill()
            p.wait()


@pytest.fixture(params=sorted(UPSTREAMS), ids=lambda m: UPSTREAMS[m])
def model(request):
    """A client-facing model for each upstream kind."""
    return request.param


def mock_requests(gateway):
    """What the mock upstream received, oldest first."""
    import json
    with urllib.request.urlopen(gateway["mock"] + "/_mock/requests") as r:
        return json.load(r)
