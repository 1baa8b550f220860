"""The OpenAI chat wire format: request validation, chunk and error builders. Pure functions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.common.errors import ApiError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Fields this layer interprets itself; every other field of the request goes upstream unchanged
# (UPSTREAM_PARAMS=passthrough), or only those in OPENAI_CHAT_PARAMS (UPSTREAM_PARAMS=openai).
OWN_FIELDS = frozenset({"messages", "model", "stream"})

# The request parameters of OpenAI's chat completions (POST /v1/chat/completions), as its API reference
# and the openai package's `CompletionCreateParams` list them (openai 3.51; a test compares the two).
# OpenAI answers 400 "Unrecognized request argument supplied" to any other top-level field.
OPENAI_CHAT_PARAMS = frozenset({
    "messages", "model", "stream", "stream_options",
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "moderation", "n", "parallel_tool_calls",
    "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options", "prompt_cache_retention",
    "reasoning_effort", "response_format", "safety_identifier", "seed", "service_tier", "stop", "store",
    "temperature", "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})

MAX_MODEL_CHARS = 256

DONE_EVENT = b"data: [DONE]\n\n"
KEEPALIVE_EVENT = b": keepalive\n\n"


@dataclass
class ChatRequest:
    """A validated chat request: what this layer reads, and everything else untouched."""

    messages: list[dict[str, Any]]
    model: str | None
    stream: bool
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def include_usage(self) -> bool:
        options = self.params.get("stream_options")
        return isinstance(options, Mapping) and bool(options.get("include_usage"))


def _invalid(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _check_content(content: Any, index: int, role: str, has_tool_calls: bool) -> None:
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return
    if content is None:
        if role in {"assistant", "function"} or has_tool_calls:
            return
        raise _invalid(f"{param} must be a string or a list of content parts, not null", param)
    if isinstance(content, list):
        for part_index, part in enumerate(content):
            part_param = f"{param}[{part_index}]"
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise _invalid(f"{part_param} must be an object with a string 'type'", part_param)
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                raise _invalid(f"{part_param}.text must be a string", f"{part_param}.text")
        return
    raise _invalid(
        f"{param} must be a string or a list of content parts, not {type(content).__name__}", param
    )


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise _invalid("'messages' is a required property", "messages", "missing_required_parameter")
    if not isinstance(messages, list):
        raise _invalid(f"'messages' must be an array, not {type(messages).__name__}", "messages")
    if not messages:
        raise _invalid("'messages' must contain at least one message", "messages", "empty_array")
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _invalid(f"{param} must be an object", param)
        role = message.get("role")
        if not isinstance(role, str):
            raise _invalid(f"{param}.role is required and must be a string", f"{param}.role")
        if role not in ROLES:
            raise _invalid(
                f"{param}.role {role!r} is not one of {', '.join(sorted(ROLES))}",
                f"{param}.role",
                "invalid_role",
            )
        _check_content(message.get("content"), index, role, bool(message.get("tool_calls")))
    return messages


MAX_TOOLS = 128  # OpenAI's own limit on `tools`
TOOL_CHOICES = frozenset({"none", "auto", "required"})


def _check_function(value: Any, param: str) -> None:
    """A function object of a tool or a tool choice: an object with a non-empty string `name`."""
    if not isinstance(value, dict):
        raise _invalid(f"{param} must be an object", param)
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{param}.name must be a non-empty string", f"{param}.name")
    if len(name) > MAX_MODEL_CHARS:
        raise _invalid(f"{param}.name is longer than {MAX_MODEL_CHARS} characters", f"{param}.name")


def validate_tools(tools: Any) -> None:
    """`tools`: absent, or a list of at most MAX_TOOLS objects with a string `type`; a function tool
    has a `function` object with a name. Other tool types go upstream for it to judge."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _invalid(f"'tools' must be an array, not {type(tools).__name__}", "tools")
    if len(tools) > MAX_TOOLS:
        raise _invalid(f"'tools' has more than {MAX_TOOLS} entries", "tools", "array_above_max_length")
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _invalid(f"{param} must be an object", param)
        kind = tool.get("type", "function")
        if not isinstance(kind, str):
            raise _invalid(f"{param}.type must be a string", f"{param}.type")
        if kind == "function":
            _check_function(tool.get("function"), f"{param}.function")


def validate_tool_choice(choice: Any) -> None:
    """`tool_choice`: absent, "none", "auto", "required", or an object with a string `type` (a function
    choice naming its function)."""
    if choice is None:
        return
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise _invalid(f"'tool_choice' must be one of none, auto, required or an object, not {choice[:40]!r}",
                           "tool_choice")
        return
    if not isinstance(choice, dict):
        raise _invalid(f"'tool_choice' must be a string or an object, not {type(choice).__name__}", "tool_choice")
    kind = choice.get("type")
    if not isinstance(kind, str):
        raise _invalid("tool_choice.type must be a string", "tool_choice.type")
    if kind == "function":
        _check_function(choice.get("function"), "tool_choice.function")


def parse_chat_request(body: bytes) -> ChatRequest:
    """Validate a /chat/completions body; raises ApiError(400) naming what is wrong."""
    if not body.strip():
        raise _invalid("The request body is empty; expected a JSON object.", None, "invalid_json")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _invalid(
            f"We could not parse the JSON body of your request: {exc.msg}.", None, "invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise _invalid("The request body must be a JSON object.", None, "invalid_json")
    messages = validate_messages(data.get("messages"))
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise _invalid("'model' must be a string", "model")
    if isinstance(model, str) and len(model) > MAX_MODEL_CHARS:
        raise _invalid(f"'model' is longer than {MAX_MODEL_CHARS} characters", "model", "model_too_long")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid("'stream' must be a boolean", "stream")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object", "stream_options")
    validate_tools(data.get("tools"))
    validate_tool_choice(data.get("tool_choice"))
    params = {key: value for key, value in data.items() if key not in OWN_FIELDS}
    return ChatRequest(messages=messages, model=model or None, stream=stream, params=params)


def select_params(
    params: Mapping[str, Any], *, openai_only: bool, drop: frozenset[str] = frozenset(),
    keep: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], list[str]]:
    """What of a request's parameters goes upstream, and the names of those left out.

    `drop` (a platform's own fields) never goes, unless named in `keep`; with `openai_only` only
    OPENAI_CHAT_PARAMS and `keep` go. The order of the fields is kept.
    """
    sent: dict[str, Any] = {}
    left_out: list[str] = []
    for name, value in params.items():
        if name in keep or (name not in drop and (not openai_only or name in OPENAI_CHAT_PARAMS)):
            sent[name] = value
        else:
            left_out.append(name)
    return sent, left_out


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chunk(
    completion_id: str,
    model: str,
    created: int,
    delta: Mapping[str, Any] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": dict(delta or {}), "finish_reason": finish_reason}],
    }


def usage_chunk(completion_id: str, model: str, created: int, usage: Mapping[str, int]) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [],
        "usage": dict(usage),
    }


def text_chunks(
    pieces: Iterable[str], model: str, *, usage: Mapping[str, int] | None = None,
    first: Mapping[str, Any] | None = None,
) -> Iterable[dict[str, Any]]:
    """A whole streamed completion of the given text pieces, role first, finish_reason last; or, given
    `first` (the id, model and created of a completion whose role chunk the caller already has), the
    rest of that one completion: its id, no second role."""
    if first is not None:
        completion_id, model, created = first["id"], first["model"] or model, first["created"]
    else:
        completion_id, created = new_completion_id(), int(time.time())
        yield chunk(completion_id, model, created, {"role": "assistant", "content": ""})
    for piece in pieces:
        yield chunk(completion_id, model, created, {"content": piece})
    yield chunk(completion_id, model, created, {}, "stop")
    if usage is not None:
        yield usage_chunk(completion_id, model, created, usage)


def completion_from_chunks(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Fold a chunk stream into one chat.completion object (non-streamed answer)."""
    completion: dict[str, Any] = {}
    usage = None
    content: list[str] = []
    finish_reason = None
    for item in chunks:
        if not completion:
            completion = {"id": item.get("id"), "object": "chat.completion", "created": item.get("created"),
                          "model": item.get("model")}
        if item.get("usage"):
            usage = item["usage"]
        for choice in item.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                content.append(delta["content"])
            finish_reason = choice.get("finish_reason") or finish_reason
    completion["choices"] = [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(content)},
            "finish_reason": finish_reason,
        }
    ]
    completion["usage"] = usage
    return completion


def choices_ok(choices: Any) -> bool:
    """Whether a chunk's `choices` has a chunk's shape: absent (None), or a list of JSON objects. A plain
    loop, cheaper per chunk than all() over a generator."""
    if choices is None:
        return True
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            return False
    return True


def is_count(value: Any) -> bool:
    """A token count as usage carries it: a whole number (not a bool) within JSON's exact range."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53


class _Unread:
    """The marker of a payload not parsed yet."""


_UNREAD = _Unread()
NOT_JSON = object()  # Chunk.data of a payload that is not JSON


class Chunk:
    """One streamed payload, parsed at most once, by whoever reads it first (the tool layer, the relay,
    the record): `raw` is the payload as it goes to the caller, `data` its JSON value (or NOT_JSON)."""

    __slots__ = ("_data", "raw")

    def __init__(self, raw: bytes, data: Any = _UNREAD) -> None:
        self.raw = raw
        self._data = data

    @classmethod
    def of(cls, obj: Any) -> Chunk:
        """A payload made here (or rewritten): serialized once, never parsed back. An upstream chunk too
        deep to write again (orjson reads deeper than it writes) is the upstream's fault: a 502."""
        try:
            return cls(orjson.dumps(obj), obj)
        except orjson.JSONEncodeError:
            raise ApiError(502, "The upstream LLM sent a chunk this server could not pass on.",
                           type="upstream_error", code="upstream_bad_chunk") from None

    @property
    def data(self) -> Any:
        if self._data is _UNREAD:
            try:
                self._data = orjson.loads(self.raw)
            except orjson.JSONDecodeError:
                self._data = NOT_JSON
        return self._data


def sse_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def sse_json(obj: Any) -> bytes:
    return sse_event(orjson.dumps(obj))


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token) for the offline responder's usage."""
    return max(1, (len(text) + 3) // 4) if text else 0
