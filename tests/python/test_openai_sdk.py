"""The official OpenAI Python SDK against the gateway: it must not notice it is not OpenAI."""

import json
import threading
import time
import urllib.request

import openai
import pytest


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=gateway["base_url"], api_key=gateway["key"], max_retries=0, timeout=20)


def test_chat_completion(client):
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi mock.chunks=3"}])
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == "tok0 tok1 tok2 "
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 3
    assert r.model == "mock-gpt"


def test_streaming_chat_with_usage(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi mock.chunks=5"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 5


def test_streaming_through_anthropic_translation(client):
    stream = client.chat.completions.create(
        model="claude-sonnet",
        messages=[{"role": "system", "content": "terse"}, {"role": "user", "content": "hi mock.chunks=2"}],
        stream=True,
        max_tokens=20,
    )
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
    assert text == "tok0 tok1 "


def test_embeddings(client):
    r = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert len(r.data) == 2
    assert all(len(d.embedding) > 0 for d in r.data)
    assert r.usage.prompt_tokens > 0


def test_models_list(client):
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["claude-sonnet", "gpt-4o-mini", "slow", "text-embedding-3-small", "via-anthropic", "via-azure",
                   "via-bedrock", "via-compat", "via-gemini", "via-gemini-embed", "via-mock", "via-openai"]


def test_bad_key_is_authentication_error(gateway):
    bad = openai.OpenAI(base_url=gateway["base_url"], api_key="sk-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401
    assert e.value.code == "invalid_api_key"


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"


def test_upstream_rate_limit_is_rate_limit_error(client):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "mock.status=429 mock.retry_after=3"}])
    assert e.value.response.headers.get("retry-after") == "3"


def test_the_client_key_never_reaches_the_upstream(client, gateway):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    with urllib.request.urlopen(gateway["mock"] + "/_mock/requests") as r:
        seen = json.load(r)
    assert seen, "the mock recorded nothing"
    assert all(gateway["key"] not in json.dumps(req) for req in seen)
    assert seen[-1]["headers"]["authorization"] == "Bearer sk-upstream-for-sdk"


def _rejections(gateway):
    with urllib.request.urlopen(gateway["admin"] + "/metrics") as r:
        text = r.read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith("switchyard_limit_rejections_total"))


def _hold_the_slot(gateway):
    """Occupies the limited key's only parallel slot for ~1.5 s, in a thread."""
    holder = openai.OpenAI(base_url=gateway["base_url"], api_key=gateway["limited_key"], max_retries=0, timeout=20)
    t = threading.Thread(target=lambda: holder.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hold"}]))
    t.start()
    time.sleep(0.3)
    return t


def test_gateway_rate_limit_is_rate_limit_error(gateway):
    limited = openai.OpenAI(base_url=gateway["base_url"], api_key=gateway["limited_key"], max_retries=0, timeout=20)
    t = _hold_the_slot(gateway)
    try:
        with pytest.raises(openai.RateLimitError) as e:
            limited.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}])
    finally:
        t.join()
    assert e.value.status_code == 429
    assert e.value.code == "rate_limit_exceeded"
    assert e.value.response.headers.get("retry-after") == "1"
    assert "parallel" in e.value.message


def test_sdk_waits_the_advertised_retry_after(gateway):
    # One retry: refused twice while the slot is held (~2.2 s more). Between the attempts the
    # SDK must wait the gateway's `retry-after-ms: 1000`, not its own 0.4-0.5 s first backoff.
    once = openai.OpenAI(base_url=gateway["base_url"], api_key=gateway["limited_key"], max_retries=1, timeout=20)
    before = _rejections(gateway)
    t = _hold_the_slot(gateway)
    started = time.monotonic()
    try:
        with pytest.raises(openai.RateLimitError):
            once.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}])
        elapsed = time.monotonic() - started
    finally:
        t.join()
    assert _rejections(gateway) - before == 2, "two attempts, both refused"
    assert 0.95 <= elapsed < 2.0, elapsed


def test_sdk_retries_into_a_free_slot(gateway):
    patient = openai.OpenAI(base_url=gateway["base_url"], api_key=gateway["limited_key"], max_retries=5, timeout=20)
    before = _rejections(gateway)
    t = _hold_the_slot(gateway)
    try:
        r = patient.chat.completions.create(model="slow", messages=[{"role": "user", "content": "hi"}])
    finally:
        t.join()
    assert r.choices[0].message.content
    assert _rejections(gateway) > before, "the SDK was refused at least once"


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_body_sent_whole_gets_the_413(gateway, chunked):
    # urllib writes the whole body before it reads the answer: the gateway must read (and
    # discard) the rest instead of resetting the connection under it.
    size = 24 * 1024 * 1024
    data = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"x" * size + b'"}]}'
    headers = {"Authorization": f"Bearer {gateway['key']}", "Content-Type": "application/json"}
    if chunked:
        body = (data[i:i + 65536] for i in range(0, len(data), 65536))
        headers["Transfer-Encoding"] = "chunked"
    else:
        body = data
    req = urllib.request.Request(gateway["base_url"] + "/chat/completions", data=body, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 413
    err = json.loads(e.value.read())
    assert "larger than the limit" in err["error"]["message"]
