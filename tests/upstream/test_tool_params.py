"""A caller's `tools` and `tool_choice`, whatever their shape: a 400 naming the parameter, or an
answer; never a 5xx (the tool rounds read them too)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import error_of, post_json, sse_events

QUESTION = [{"role": "user", "content": "Where is the ISS?"}]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
names = st.one_of(st.sampled_from(["get_weather", "iss_passes", "", "x" * 300]), st.text(max_size=12), json_values)
functions = st.one_of(json_values, st.fixed_dictionaries({"name": names}, optional={"parameters": json_values}))
tool_like = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from(["function", "custom"]), json_values), "function": functions})
tools = st.one_of(json_values, st.lists(st.one_of(tool_like, json_values), max_size=4))
tool_choices = st.one_of(
    st.sampled_from(["none", "auto", "required", "get_weather"]), json_values,
    st.fixed_dictionaries({}, optional={"type": st.one_of(st.just("function"), json_values), "function": functions}),
)

MALFORMED = [
    ({"tools": [{"type": "function", "function": "x"}]}, "tools[0].function"),
    ({"tools": [None]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": {"a": 1}}}]}, "tools[0].function.name"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tool_choice": {"type": "function", "function": "x"}}, "tool_choice.function"),
    ({"tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": 3}, "tool_choice"),
]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("fields", "param"), MALFORMED)
async def test_a_malformed_tools_list_or_tool_choice_is_a_400_naming_it(fields, param, stream, base_url, upstream):
    response = await post_json(base_url, {"model": "m", "messages": QUESTION, "stream": stream, **fields})
    assert response.code == 400
    assert error_of(response)["param"] == param
    assert upstream.requests == 0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tools=tools, tool_choice=tool_choices, stream=st.booleans(), given_keys=st.sampled_from(["both", "tools",
                                                                                                  "choice"]))
def test_no_tools_or_tool_choice_shape_is_a_server_error(tools, tool_choice, stream, given_keys, base_url, io_loop):
    body = {"model": "m", "messages": QUESTION, "stream": stream}
    if given_keys in {"both", "tools"}:
        body["tools"] = tools
    if given_keys in {"both", "choice"}:
        body["tool_choice"] = tool_choice
    response = io_loop.run_sync(lambda: post_json(base_url, body), timeout=20)
    assert response.code < 500, (body, response.body[:500])
    if response.code == 400:
        param = error_of(response)["param"] or ""
        assert param.startswith(("tools", "tool_choice")), (body, response.body)
    elif stream:
        events = [orjson.loads(data) for data in sse_events(response.body) if data != "[DONE]"]
        assert not [event for event in events if "error" in event], (body, events)
