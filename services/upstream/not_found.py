"""An upstream's 404, read for what it means: a model it does not have, or an address that is wrong.

A model the upstream lacks (OpenAI's `model_not_found`, Ollama's `model "llama3" not found, try
pulling it first`, vLLM's `The model ... does not exist`) is fixed with MODEL_MAP or LLM_MODEL; any
other 404 (an HTML page, `Invalid URL (POST /v1/chat/completions/chat/completions)`) means
OPENAI_BASE_URL is not the part before /chat/completions.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import orjson

SHOWN_MODELS = 10
_MODEL_MISSING = re.compile(
    r"\bmodel\b.{0,300}?\b(not found|does not exist|doesn't exist|not exist|unknown|no such|not available)\b"
    r"|\b(unknown|no such|invalid) model\b",
    re.IGNORECASE | re.DOTALL,
)


def error_text(body: bytes, status: int) -> tuple[str, str | None]:
    """The message of an error body (OpenAI's `{"error": {"message", "code"}}`, Ollama's `{"error": "..."}`,
    vLLM's `{"message": ...}`, or the text itself) and its code, if any."""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = " ".join(body[:4096].decode("utf-8", "replace").split())
        return text or f"HTTP {status} with an empty body", None
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail")
        code = error.get("code")
        if isinstance(message, str) and message:
            return message, code if isinstance(code, str) else None
        return orjson.dumps(error)[:4096].decode("utf-8", "replace"), code if isinstance(code, str) else None
    if isinstance(error, str) and error:
        return error, None
    return orjson.dumps(parsed)[:4096].decode("utf-8", "replace"), None


def model_missing(message: str, code: str | None) -> bool:
    """Whether a 404's message or code says the model asked for is unknown to the upstream."""
    return code == "model_not_found" or bool(_MODEL_MISSING.search(message))


def listed(models: list[str] | None, limit: int = SHOWN_MODELS) -> str:
    """The upstream's models as a short phrase: at most `limit` names, then how many more."""
    if models is None:
        return "its model list (GET /models) could not be read"
    if not models:
        return "it lists no models"
    shown = ", ".join(models[:limit])
    more = f" and {len(models) - limit} more" if len(models) > limit else ""
    return f"it lists {shown}{more}"


def model_hint(model: object, models: list[str] | None) -> str:
    """What the caller and the log are told for a model the upstream does not have."""
    name = model if isinstance(model, str) else "?"
    return (f"The upstream LLM has no model {name[:100]!r} (404): set MODEL_MAP (caller=upstream names) or "
            f"LLM_MODEL on this server to a model the upstream has; {listed(models)}.")


def base_url_hint(base_url: str) -> str:
    """What to change in OPENAI_BASE_URL when a 404 names no model."""
    path = urlsplit(base_url).path.rstrip("/")
    if path.endswith("/chat/completions"):
        advice = "it should stop before /chat/completions"
    elif not re.search(r"/v\d+[a-z]*$", path):
        advice = "most servers want the path up to /v1 (e.g. http://localhost:11434/v1 for Ollama)"
    else:
        advice = "it should be the part before /chat/completions, e.g. https://api.openai.com/v1"
    return f"OPENAI_BASE_URL={_without_credentials(base_url)}: {advice}"


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"
