"""ds4-server driven by the official `anthropic` SDK: messages, streaming, tools, count_tokens."""

import anthropic
import pytest

from dsml import ARGS, DSML, SCHEMA

USER = [{"role": "user", "content": "Hello"}]


def test_messages_non_stream_usage_is_real(claude):
    m = claude.messages.create(model="deepseek-chat", max_tokens=5, messages=USER, system="be brief")
    assert m.stop_reason == "max_tokens"
    assert m.content[0].type == "text"
    n = claude.messages.count_tokens(model="deepseek-chat", messages=USER, system="be brief").input_tokens
    assert n > 0
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) == n
    assert m.usage.output_tokens == 5


def test_messages_stream_with_thinking(claude):
    with claude.messages.stream(model="deepseek-reasoner", max_tokens=4, messages=USER) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    assert events[0] == "message_start"
    assert final.content[0].type == "thinking"
    assert final.content[0].signature == final.id
    assert final.stop_reason == "max_tokens"


def test_stop_sequences(claude):
    # This SDK version has no `temperature` argument; the server still reads the field.
    greedy = {"temperature": 0}
    base = claude.messages.create(model="deepseek-chat", max_tokens=8, messages=USER, extra_body=greedy)
    text = base.content[0].text
    assert len(text) >= 4
    stop = text[2:4]
    cut = claude.messages.create(model="deepseek-chat", max_tokens=8, messages=USER,
                                 stop_sequences=[stop], extra_body=greedy)
    assert cut.content[0].text == text[: text.index(stop)]
    # As the Anthropic API reports it (ds4 says end_turn/null here).
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    with claude.messages.stream(model="deepseek-chat", max_tokens=8, messages=USER,
                                stop_sequences=[stop], extra_body=greedy) as s:
        final = s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_tool_use_non_stream_and_stream(claude):
    tools = [{"name": "get_weather", "input_schema": SCHEMA}]
    m = claude.messages.create(model="deepseek-chat", max_tokens=100, messages=USER, tools=tools,
                               extra_body={"ds4_test_output": DSML})
    use = [b for b in m.content if b.type == "tool_use"][0]
    assert m.stop_reason == "tool_use" and use.input == ARGS and use.id.startswith("toolu_")
    with claude.messages.stream(model="deepseek-chat", max_tokens=100, messages=USER, tools=tools,
                                extra_body={"ds4_test_output": DSML}) as s:
        final = s.get_final_message()
    use = [b for b in final.content if b.type == "tool_use"][0]
    assert use.name == "get_weather" and use.input == ARGS
    # Second turn with the tool result renders and runs.
    follow = claude.messages.create(model="deepseek-chat", max_tokens=2, tools=tools, messages=USER + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert follow.usage.output_tokens == 2


def test_errors_parse_as_sdk_error_types(claude, base_url):
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(model="x", max_tokens=1, messages=[{"role": "bot", "content": "x"}])
    assert "unknown role" in e.value.message
    bad = anthropic.Anthropic(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="x", max_tokens=1, messages=USER)
