"""The official OpenAI SDK against every upstream kind through the gateway (OpenAI, Azure,
OpenAI-compatible, Anthropic, Gemini, Bedrock, the built-in mock): chat, streaming, tools
streamed, JSON schema, images, embeddings, and the Responses API created and streamed. Each
test asserts on what the SDK parsed: types, tool arguments, usage, stop reasons, errors."""

import base64
import json

import openai
import pydantic
import pytest

from conftest import UPSTREAMS, mock_requests

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
     "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time in a city",
     "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
]
# A 1x1 transparent PNG.
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6300010000000500010d0a2db40000000049454e44ae426082")).decode()


@pytest.fixture()
def client(gateway):
    return openai.OpenAI(base_url=gateway["base_url"], api_key=gateway["key"], max_retries=0, timeout=20)


def builtin(model):
    return UPSTREAMS[model] == "builtin"


def test_chat(client, model):
    r = client.chat.completions.create(model=model, max_tokens=50,
                                       messages=[{"role": "system", "content": "terse"},
                                                 {"role": "user", "content": "hi mock.chunks=3"}])
    assert r.object == "chat.completion"
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content
    if not builtin(model):
        assert r.choices[0].message.content == "tok0 tok1 tok2 "
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 3
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_with_usage(client, model):
    stream = client.chat.completions.create(model=model, max_tokens=50, stream=True, stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "hi mock.chunks=5"}])
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    if not builtin(model):
        assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == (5 if not builtin(model) else 3)


def test_tools_streamed(client, model):
    if builtin(model):
        pytest.skip("the built-in mock answers text only")
    messages = [{"role": "user", "content": "Weather and time in Paris and Rome? mock.tools=2"}]
    with client.chat.completions.stream(model=model, max_tokens=100, tools=TOOLS, messages=messages) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"location": "Paris"}, {"location": "Rome"}]
    assert len({c.id for c in calls}) == 2 and all(c.id for c in calls)
    # The results go back; the model's answer quotes them (the mock echoes tool results).
    messages.append(choice.message.model_dump(exclude_none=True))
    for c, result in zip(calls, ["18C and sunny", "14:05"]):
        messages.append({"role": "tool", "tool_call_id": c.id, "content": result})
    r = client.chat.completions.create(model=model, max_tokens=100, tools=TOOLS, messages=messages)
    assert r.choices[0].finish_reason == "stop"
    assert "18C and sunny" in r.choices[0].message.content and "14:05" in r.choices[0].message.content


class Answer(pydantic.BaseModel):
    answer: int


def test_json_schema(client, model):
    if builtin(model):
        pytest.skip("the built-in mock answers fixed text")
    r = client.chat.completions.parse(model=model, max_tokens=100, response_format=Answer,
                                      messages=[{"role": "user", "content": "What is six times seven?"}])
    assert r.choices[0].message.parsed == Answer(answer=42)
    assert r.choices[0].finish_reason == "stop"


def test_images_reach_the_upstream_in_its_own_shape(client, model, gateway):
    if builtin(model):
        pytest.skip("the built-in mock has no upstream")
    r = client.chat.completions.create(model=model, max_tokens=20, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this image? mock.chunks=2"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]}])
    assert r.choices[0].message.content == "tok0 tok1 "
    body = json.dumps(mock_requests(gateway)[-1]["body"])
    kind = UPSTREAMS[model]
    expected = {
        "anthropic": '{"data": "%s", "media_type": "image/png", "type": "base64"}' % PNG,
        "gemini": '{"inlineData": {"data": "%s", "mimeType": "image/png"}}' % PNG,
        "bedrock": '{"image": {"format": "png", "source": {"bytes": "%s"}}}' % PNG,
    }.get(kind, f"data:image/png;base64,{PNG}")
    assert expected in json.dumps(json.loads(body), sort_keys=True), body


def test_image_urls_bedrock_cannot_take_are_a_400_naming_them(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="via-bedrock", max_tokens=20, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert "image URL" in e.value.message
    assert e.value.code == "unsupported_parameter"


def test_embeddings(client, model):
    kind = UPSTREAMS[model]
    target = "via-gemini-embed" if kind == "gemini" else model
    if kind in ("anthropic", "bedrock"):
        with pytest.raises(openai.BadRequestError) as e:
            client.embeddings.create(model=target, input=["hello"])
        assert "does not support embeddings" in e.value.message
        return
    if kind == "openai":
        target = "text-embedding-3-small"
    r = client.embeddings.create(model=target, input=["hello", "world"], dimensions=6)
    assert len(r.data) == 2 and [d.index for d in r.data] == [0, 1]
    assert all(len(d.embedding) == 6 and isinstance(d.embedding[0], float) for d in r.data)
    assert r.usage.prompt_tokens > 0


def test_responses_create(client, model):
    r = client.responses.create(model=model, instructions="terse", input="hi mock.chunks=3", max_output_tokens=50)
    assert r.object == "response"
    assert r.status == "completed"
    if not builtin(model):
        assert r.output_text == "tok0 tok1 tok2 "
    assert r.usage.output_tokens == 3
    assert r.usage.input_tokens > 0


def test_responses_tools(client, model):
    if builtin(model):
        pytest.skip("the built-in mock answers text only")
    tools = [{"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
              "parameters": t["function"]["parameters"]} for t in TOOLS]
    r = client.responses.create(model=model, tools=tools, max_output_tokens=100,
                                input=[{"role": "user", "content": "Weather and time? mock.tools=2"}])
    calls = [o for o in r.output if o.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.arguments) for c in calls] == [{"location": "Paris"}, {"location": "Rome"}]
    # The outputs go back as function_call_output items.
    follow = [{"role": "user", "content": "Weather and time? mock.tools=2"}]
    follow += [{"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments} for c in calls]
    follow += [{"type": "function_call_output", "call_id": c.call_id, "output": out} for c, out in zip(calls, ["rainy", "09:30"])]
    r = client.responses.create(model=model, tools=tools, max_output_tokens=100, input=follow)
    assert "rainy" in r.output_text and "09:30" in r.output_text


def test_responses_stream(client, model):
    deltas = []
    with client.responses.stream(model=model, input="hi mock.chunks=4", max_output_tokens=50) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert final.status == "completed"
    assert "".join(deltas) == final.output_text
    if not builtin(model):
        assert final.output_text == "tok0 tok1 tok2 tok3 "
    assert final.usage.output_tokens == (4 if not builtin(model) else 3)


def test_responses_state_is_refused_where_there_is_no_store(client, model):
    if UPSTREAMS[model] == "openai":
        pytest.skip("OpenAI stores responses itself")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=model, input="hi", previous_response_id="resp_123")
    assert e.value.param == "previous_response_id"


@pytest.mark.parametrize("status,error,client_status", [
    (429, openai.RateLimitError, 429),
    (503, openai.InternalServerError, 503),
    (500, openai.InternalServerError, 502),
    (400, openai.BadRequestError, 400),
])
def test_upstream_errors_keep_their_class(client, model, status, error, client_status):
    if builtin(model):
        pytest.skip("the built-in mock has no upstream")
    with pytest.raises(error) as e:
        client.chat.completions.create(model=model, max_tokens=20,
                                       messages=[{"role": "user", "content": f"hi mock.status={status}"}])
    assert e.value.status_code == client_status


def test_a_broken_stream_raises_in_the_sdk(client, model):
    if builtin(model):
        pytest.skip("the built-in mock has no upstream")
    stream = client.chat.completions.create(model=model, max_tokens=50, stream=True,
                                            messages=[{"role": "user", "content": "hi mock.chunks=6 mock.malformed=1"}])
    with pytest.raises(openai.APIError) as e:
        for _ in stream:
            pass
    assert "malformed" in str(e.value)
