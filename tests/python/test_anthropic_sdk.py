"""The official Anthropic SDK against every upstream kind through the gateway's
`/v1/messages`: messages, streaming with `client.messages.stream`, tools, thinking,
count_tokens and errors, asserting on what the SDK parsed."""

import json

import anthropic
import pytest

from conftest import UPSTREAMS, mock_requests

TOOLS = [
    {"name": "get_weather", "description": "Current weather in a city",
     "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
    {"name": "get_time", "description": "Local time in a city",
     "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
]


@pytest.fixture()
def client(gateway):
    base = gateway["base_url"].removesuffix("/v1")
    return anthropic.Anthropic(base_url=base, api_key=gateway["key"], max_retries=0, timeout=20)


def builtin(model):
    return UPSTREAMS[model] == "builtin"


def test_message(client, model):
    m = client.messages.create(model=model, max_tokens=50, system="terse",
                               messages=[{"role": "user", "content": "hi mock.chunks=3"}])
    assert m.type == "message" and m.role == "assistant"
    assert m.id.startswith("msg_")
    assert m.content[0].type == "text"
    if not builtin(model):
        assert m.content[0].text == "tok0 tok1 tok2 "
    assert m.stop_reason == "end_turn"
    assert m.usage.output_tokens == 3
    assert m.usage.input_tokens > 0


def test_stream(client, model):
    with client.messages.stream(model=model, max_tokens=50,
                                messages=[{"role": "user", "content": "hi mock.chunks=4"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text
    if not builtin(model):
        assert text == "tok0 tok1 tok2 tok3 "
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == (4 if not builtin(model) else 3)
    assert final.usage.input_tokens > 0


def test_tools_streamed_and_answered(client, model):
    if builtin(model):
        pytest.skip("the built-in mock answers text only")
    messages = [{"role": "user", "content": "Weather and time in Paris and Rome? mock.tools=2"}]
    with client.messages.stream(model=model, max_tokens=100, tools=TOOLS, messages=messages) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [u.name for u in uses] == ["get_weather", "get_time"]
    assert [u.input for u in uses] == [{"location": "Paris"}, {"location": "Rome"}]
    assert len({u.id for u in uses}) == 2
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]})
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": u.id, "content": result}
        for u, result in zip(uses, ["18C and sunny", "14:05"])]})
    m = client.messages.create(model=model, max_tokens=100, tools=TOOLS, messages=messages)
    assert m.stop_reason == "end_turn"
    assert "18C and sunny" in m.content[0].text and "14:05" in m.content[0].text


def test_thinking(client, model):
    if builtin(model):
        pytest.skip("the built-in mock does not think")
    kind = UPSTREAMS[model]
    m = client.messages.create(model=model, max_tokens=3000, thinking={"type": "enabled", "budget_tokens": 2048},
                               messages=[{"role": "user", "content": "hi mock.thinking=1 mock.chunks=2"}])
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == "Let me think about this step by step."
    # Anthropic and Bedrock sign thinking; the others' reasoning comes unsigned.
    if kind in ("anthropic", "bedrock"):
        assert m.content[0].signature.startswith("EqQB")
    # The request asked the upstream to think, in its own terms.
    body = mock_requests_of(client)[-1]["body"]
    expected = {
        "anthropic": lambda b: b["thinking"] == {"type": "enabled", "budget_tokens": 2048},
        "bedrock": lambda b: b["additionalModelRequestFields"]["thinking"]["budget_tokens"] == 2048,
        "gemini": lambda b: b["generationConfig"]["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 2048},
    }.get(kind, lambda b: b["reasoning_effort"] == "medium")
    assert expected(body), body


def test_thinking_streamed_with_its_signature(client, model):
    if UPSTREAMS[model] not in ("anthropic", "bedrock"):
        pytest.skip("only Anthropic and Bedrock sign thinking")
    with client.messages.stream(model=model, max_tokens=3000, thinking={"type": "enabled", "budget_tokens": 2048},
                                messages=[{"role": "user", "content": "hi mock.thinking=1 mock.chunks=2"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == "Let me think about this step by step."
    assert final.content[0].signature.startswith("EqQB")


def test_signed_thinking_goes_back_upstream(client, model):
    if UPSTREAMS[model] not in ("anthropic", "bedrock"):
        pytest.skip("only Anthropic and Bedrock take thinking back")
    first = client.messages.create(model=model, max_tokens=3000, tools=TOOLS,
                                   thinking={"type": "enabled", "budget_tokens": 2048},
                                   messages=[{"role": "user", "content": "weather? mock.thinking=1 mock.tools=1"}])
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    messages = [
        {"role": "user", "content": "weather? mock.thinking=1 mock.tools=1"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first.content[1].id, "content": "sunny"}]},
    ]
    m = client.messages.create(model=model, max_tokens=3000, tools=TOOLS,
                               thinking={"type": "enabled", "budget_tokens": 2048}, messages=messages)
    assert "sunny" in m.content[-1].text
    sent = json.dumps(mock_requests_of(client)[-1]["body"])
    assert first.content[0].signature in sent, "the signature reached the upstream"


def test_count_tokens(client, model):
    r = client.messages.count_tokens(model=model, system="terse",
                                     messages=[{"role": "user", "content": "how many tokens is this?"}])
    assert isinstance(r.input_tokens, int) and r.input_tokens > 0


@pytest.mark.parametrize("status,error", [
    (429, anthropic.RateLimitError),
    (529, anthropic.OverloadedError),
    (503, anthropic.OverloadedError),
    (400, anthropic.BadRequestError),
    (500, anthropic.InternalServerError),
])
def test_upstream_errors_keep_their_class(client, model, status, error):
    if builtin(model):
        pytest.skip("the built-in mock has no upstream")
    with pytest.raises(error) as e:
        client.messages.create(model=model, max_tokens=20, messages=[{"role": "user", "content": f"hi mock.status={status}"}])
    assert e.value.body["type"] == "error"


def test_gateway_errors_are_anthropic_errors(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="via-gemini", max_tokens=5, messages=[{"role": "user", "content": "hi"}],
                               extra_body={"container": "ctr_1"})
    assert "container" in e.value.message
    bad = anthropic.Anthropic(base_url=client.base_url, api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="via-anthropic", max_tokens=5, messages=[{"role": "user", "content": "hi"}])


def test_a_broken_stream_ends_with_an_error_event(client, model):
    if builtin(model):
        pytest.skip("the built-in mock has no upstream")
    with pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(model=model, max_tokens=50,
                                    messages=[{"role": "user", "content": "hi mock.chunks=6 mock.malformed=1"}]) as stream:
            for _ in stream:
                pass


def mock_requests_of(client):
    return mock_requests({"mock": client._mock_url})


@pytest.fixture(autouse=True)
def _remember_mock(client, gateway):
    client._mock_url = gateway["mock"]
