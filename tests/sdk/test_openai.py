"""ds4-server driven by the official `openai` SDK: chat, completions, Responses."""

import json

import openai
import pytest

from dsml import ARGS, DSML, SCHEMA

USER = [{"role": "user", "content": "Hello"}]


def test_chat_non_stream_reports_usage_and_length(oai):
    r = oai.chat.completions.create(model="deepseek-chat", messages=USER, max_tokens=5, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].finish_reason == "length"
    assert isinstance(r.choices[0].message.content, str)
    assert r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5


def test_chat_stream_with_usage(oai):
    stream = oai.chat.completions.create(
        model="deepseek-reasoner", messages=USER, max_tokens=4, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 4


def test_completions_stop_sequence(oai):
    base = oai.completions.create(model="deepseek-chat", prompt="Hi", max_tokens=8, temperature=0)
    text = base.choices[0].text
    assert len(text) >= 4
    stop = text[2:4]
    cut = oai.completions.create(model="deepseek-chat", prompt="Hi", max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]
    streamed = "".join(
        c.choices[0].text for c in oai.completions.create(
            model="deepseek-chat", prompt="Hi", max_tokens=8, temperature=0, stop=[stop], stream=True)
        if c.choices)
    assert streamed == cut.choices[0].text


def test_chat_tool_call_non_stream_and_stream(oai):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": SCHEMA}}]
    r = oai.chat.completions.create(model="deepseek-chat", messages=USER, tools=tools, max_tokens=100,
                                    extra_body={"ds4_test_output": DSML})
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == ARGS
    args, names = "", []
    for c in oai.chat.completions.create(model="deepseek-chat", messages=USER, tools=tools, max_tokens=100,
                                         stream=True, extra_body={"ds4_test_output": DSML}):
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            if tc.function.name:
                names.append(tc.function.name)
            args += tc.function.arguments or ""
    assert names == ["get_weather"] and json.loads(args) == ARGS


def test_responses_non_stream_and_stream(oai):
    r = oai.responses.create(model="deepseek-chat", input="Hello", max_output_tokens=4)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 4
    events = list(oai.responses.create(model="deepseek-chat", input="Hello", max_output_tokens=4, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    final = events[-1].response
    assert final.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_responses_tool_call(oai):
    tools = [{"type": "function", "name": "get_weather", "parameters": SCHEMA}]
    r = oai.responses.create(model="deepseek-chat", input="Weather?", tools=tools, max_output_tokens=100,
                             extra_body={"ds4_test_output": DSML})
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == ARGS
    events = list(oai.responses.create(model="deepseek-chat", input="Weather?", tools=tools, max_output_tokens=100,
                                       stream=True, extra_body={"ds4_test_output": DSML}))
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(done[0].arguments) == ARGS


def test_errors_parse_as_sdk_error_types(oai, base_url):
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="x", messages=[{"role": "robot", "content": "x"}])
    assert "unknown role" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="x", messages=[{"role": "user", "content": "word " * 3000}])
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="x", input="x", previous_response_id="resp_1")
    bad = openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="x", messages=USER, max_tokens=1)


def test_models_list(oai):
    assert [m.id for m in oai.models.list()] == ["deepseek-v4-flash"]
