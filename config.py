"""One frozen Settings object, read from the environment, a .env file and flags, checked at start."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent

BUNDLED_TLE = ROOT / "data" / "iss_zarya.tle"


class ConfigError(ValueError):
    """A setting has a value the server cannot run with."""


def parse_bool(value: str) -> bool:
    """The words for true and false in settings and query parameters (an empty value is false)."""
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"must be a number, 0 or more, got {value!r}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must be 0 or more, got {value!r}")
    return number


def _redis_url(value: str) -> str | None:
    url = value.strip()
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return url


def _choice(*allowed: str):
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {value!r}")
        return lowered

    return parse


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in value.split(",") if part.strip())


def _optional_seconds(value: str) -> float | None:
    """Seconds, or off: empty, 0 or "off" turn the limit off."""
    if value.strip().lower() in {"", "0", "off"}:
        return None
    return _positive_float(value)


def _optional(value: str) -> str | None:
    return value.strip() or None


def _model_map(value: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for part in value.split(","):
        if not part.strip():
            continue
        caller, sep, upstream = part.partition("=")
        if not sep or not caller.strip() or not upstream.strip():
            raise ValueError(f"expected caller=upstream pairs separated by commas, got {part.strip()!r}")
        pairs.append((caller.strip(), upstream.strip()))
    return tuple(pairs)


def _console_token(value: str) -> str | None:
    token = value.strip()
    if token and len(token) < 16:
        # Never echo it: the message goes to stderr and logs.
        raise ValueError(f"must be at least 16 characters when set (got {len(token)}); leave it unset for a "
                         "random one")
    return token or None


_KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The name SERVER_API_KEY's one key goes by in the console and the logs (everyone holding it is one caller).
SHARED_KEY_NAME = "default"


def _named_keys(value: str) -> tuple[tuple[str, str], ...]:
    """SERVER_API_KEYS: `name:key` pairs separated by commas; names and keys unique. Never echoes a key."""
    pairs: list[tuple[str, str]] = []
    for index, part in enumerate(value.split(","), start=1):
        if not part.strip():
            continue
        name, sep, key = part.strip().partition(":")
        if not sep or not _KEY_NAME.fullmatch(name) or not key.strip():
            raise ValueError(f"entry {index}: expected name:key, the name of letters, digits, '.', '_' or '-' "
                             "(at most 64)")
        pairs.append((name, key.strip()))
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names) or SHARED_KEY_NAME in names:
        raise ValueError(f"names must be unique and not {SHARED_KEY_NAME!r} (SERVER_API_KEY's)")
    if len({key for _, key in pairs}) != len(pairs):
        raise ValueError("two names share one key")
    return tuple(pairs)


def _optional_bool(value: str) -> bool | None:
    """true, false, or empty / "auto" for the default that depends on other settings."""
    if value.strip().lower() in {"", "auto"}:
        return None
    return parse_bool(value)


def _networks(value: str) -> tuple[str, ...]:
    """Addresses or CIDRs separated by commas (or "*" for any), checked and kept in their normal form."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if "*" in parts:
        return ("*",)
    return tuple(str(ipaddress.ip_network(part, strict=False)) for part in parts)


def _names(value: str) -> tuple[str, ...]:
    """Comma-separated names, as written (request fields are case-sensitive)."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _origins(value: str) -> tuple[str, ...]:
    """Exact web origins (scheme://host[:port]); never a wildcard: the chat routes take a key."""
    origins = []
    for part in value.split(","):
        origin = part.strip().rstrip("/").lower()
        if not origin:
            continue
        if origin == "*" or "*" in origin:
            raise ValueError("list exact origins such as https://app.example.com; a wildcard is not accepted "
                             "(a page on any site could then spend your key's upstream)")
        scheme, sep, rest = origin.partition("://")
        if scheme not in {"http", "https"} or not sep or not rest or "/" in rest or "?" in rest or "#" in rest:
            raise ValueError(f"expected an origin such as https://app.example.com (no path), got {part.strip()!r}")
        origins.append(origin)
    return tuple(origins)


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADERS_NOT_SET = {"host", "content-length", "transfer-encoding", "connection"}


def _headers(value: str) -> tuple[tuple[str, str], ...]:
    """A JSON object of header names to string values, e.g. {"HTTP-Referer": "https://example.org"}."""
    if not value.strip():
        return ()
    try:
        parsed = json.loads(value)
    except ValueError:
        raise ValueError('expected a JSON object of header names to values, e.g. {"X-Title": "ISS"}') from None
    if not isinstance(parsed, dict):
        raise ValueError('expected a JSON object of header names to values, e.g. {"X-Title": "ISS"}')
    pairs = []
    for name, header in parsed.items():
        if not _HEADER_NAME.match(name) or name.lower() in _HEADERS_NOT_SET:
            raise ValueError(f"{name[:40]!r} is not a header name this server can set")
        if not isinstance(header, str) or any(ch in header for ch in "\r\n\0"):
            # Never echo the value: it may be a credential.
            raise ValueError(f"the value of {name!r} must be a string on one line")
        pairs.append((name, header))
    return tuple(pairs)


def _optional_path(value: str) -> Path | None:
    return Path(value.strip()) if value.strip() else None


@dataclass(frozen=True)
class Settings:
    """Everything the server can be configured with; field metadata names the env variable."""

    host: str = field(default="127.0.0.1", metadata={"env": "HOST", "parse": str})
    port: int = field(default=5000, metadata={"env": "PORT", "parse": int})

    trust_proxy_headers: bool = field(
        default=False, metadata={"env": "TRUST_PROXY_HEADERS", "parse": parse_bool}
    )
    server_api_key: str | None = field(
        default=None, repr=False, metadata={"env": "SERVER_API_KEY", "parse": _optional}
    )
    # --- issue 19: who is calling, and whom to believe about it ---
    # Named keys, "name1:key1,name2:key2": each name is a caller of its own (its own conversations for
    # SUPERSEDE); the console and logs show the name. SERVER_API_KEY's holders are one caller, "default".
    server_api_keys: tuple[tuple[str, str], ...] = field(
        default=(), repr=False, metadata={"env": "SERVER_API_KEYS", "parse": _named_keys}
    )
    # Proxies whose X-Forwarded-For / X-Real-Ip / X-Forwarded-Proto are believed (addresses or CIDRs,
    # "*" for any). Empty: loopback (127.0.0.1, ::1) when TRUST_PROXY_HEADERS=true, else nobody.
    trusted_proxies: tuple[str, ...] = field(
        default=(), metadata={"env": "TRUSTED_PROXIES", "parse": _networks}
    )
    # A worker whose event loop has not beaten for this long is killed (SIGKILL) and replaced (WORKERS >= 2).
    worker_timeout: float | None = field(
        default=30.0, metadata={"env": "WORKER_TIMEOUT", "parse": _optional_seconds}
    )
    max_body_bytes: int = field(
        default=1024 * 1024, metadata={"env": "MAX_BODY_BYTES", "parse": _positive_int}
    )
    # --- issue 9: hostile network and upstream ---
    max_connections: int = field(
        default=1000, metadata={"env": "MAX_CONNECTIONS", "parse": _positive_int}
    )
    # Names (besides localhost and loopback addresses) the chat routes answer to without a key.
    allowed_hosts: tuple[str, ...] = field(default=(), metadata={"env": "ALLOWED_HOSTS", "parse": _csv})
    keepalive_interval: float = field(
        default=3.0, metadata={"env": "KEEPALIVE_INTERVAL", "parse": _positive_float}
    )
    drain_timeout: float = field(
        default=10.0, metadata={"env": "DRAIN_TIMEOUT", "parse": _positive_float}
    )
    fallback_reply: str | None = field(
        default=None, metadata={"env": "FALLBACK_REPLY", "parse": _optional}
    )

    # --- the chat path's limits and speculative bursts (issue 8) ---
    # No content token by then: the upstream is treated as failed before the first token.
    first_token_timeout: float | None = field(
        default=None, metadata={"env": "FIRST_TOKEN_TIMEOUT", "parse": _optional_seconds}
    )
    # The whole answer, from the request's arrival to its end (issue 9): comments, keepalives and a
    # byte at a time do not stretch it. Off with 0.
    max_stream_seconds: float | None = field(
        default=300.0, metadata={"env": "MAX_STREAM_SECONDS", "parse": _optional_seconds}
    )
    # "conversation": a newer request with the same conversation-id ends the older one in flight.
    supersede: str = field(
        default="off", metadata={"env": "SUPERSEDE", "parse": _choice("off", "conversation")}
    )
    # --- end of issue 8's block ---

    llm_backend: str = field(
        default="auto", metadata={"env": "LLM_BACKEND", "parse": _choice("auto", "openai", "builtin")}
    )
    llm_model: str | None = field(default=None, metadata={"env": "LLM_MODEL", "parse": _optional})
    default_model: str = field(default="gpt-4o-mini", metadata={"env": "DEFAULT_MODEL", "parse": str})
    # Callers' model names to the upstream's: "nova-iss=gpt-4o-mini,*=gpt-4o-mini" (* for any other).
    model_map: tuple[tuple[str, str], ...] = field(default=(), metadata={"env": "MODEL_MAP", "parse": _model_map})
    models_cache_seconds: float = field(
        default=300.0, metadata={"env": "MODELS_CACHE_SECONDS", "parse": _positive_float}
    )
    openai_api_key: str | None = field(
        default=None, repr=False, metadata={"env": "OPENAI_API_KEY", "parse": _optional}
    )
    openai_base_url: str | None = field(
        default=None, metadata={"env": "OPENAI_BASE_URL", "parse": _optional}
    )
    upstream_timeout: float = field(
        default=30.0, metadata={"env": "UPSTREAM_TIMEOUT", "parse": _positive_float}
    )
    upstream_connect_timeout: float = field(
        default=5.0, metadata={"env": "UPSTREAM_CONNECT_TIMEOUT", "parse": _positive_float}
    )
    upstream_max_bytes: int = field(
        default=16 * 1024 * 1024, metadata={"env": "UPSTREAM_MAX_BYTES", "parse": _positive_int}
    )
    upstream_max_event_bytes: int = field(
        default=1024 * 1024, metadata={"env": "UPSTREAM_MAX_EVENT_BYTES", "parse": _positive_int}
    )
    upstream_max_retries: int = field(
        default=0, metadata={"env": "UPSTREAM_MAX_RETRIES", "parse": _non_negative_int}
    )
    # Sent with every upstream request (a gateway's own headers): a JSON object, e.g.
    # {"HTTP-Referer": "https://example.org", "X-Title": "ISS"}. Values may be credentials: never shown.
    upstream_headers: tuple[tuple[str, str], ...] = field(
        default=(), repr=False, metadata={"env": "UPSTREAM_HEADERS", "parse": _headers}
    )
    # OpenAI's organization and project headers, as the openai package sends them from the same variables.
    openai_org_id: str | None = field(default=None, metadata={"env": "OPENAI_ORG_ID", "parse": _optional})
    openai_project_id: str | None = field(default=None, metadata={"env": "OPENAI_PROJECT_ID", "parse": _optional})

    iss_inject: str = field(
        default="user", metadata={"env": "ISS_INJECT", "parse": _choice("user", "system", "off")}
    )
    iss_sources: tuple[str, ...] = field(
        default=("open-notify", "wheretheiss", "tle", "crew"), metadata={"env": "ISS_SOURCES", "parse": _csv}
    )
    iss_api_url: str = field(
        default="http://api.open-notify.org/iss-now.json", metadata={"env": "ISS_API_URL", "parse": str}
    )
    wheretheiss_url: str = field(
        default="https://api.wheretheiss.at/v1/satellites/25544",
        metadata={"env": "WHERETHEISS_URL", "parse": str},
    )
    tle_url: str = field(
        # OMM JSON, the format CelesTrak points people to; a body that is not usable JSON is asked
        # for again once as FORMAT=TLE. A URL without FORMAT=JSON is read as a TLE.
        default="https://celestrak.org/NORAD/elements/gp.php?CATNR=25544&FORMAT=JSON",
        metadata={"env": "TLE_URL", "parse": str},
    )
    astros_url: str = field(
        default="http://api.open-notify.org/astros.json", metadata={"env": "ASTROS_URL", "parse": str}
    )
    crew_refresh_interval: float = field(
        default=6 * 3600.0, metadata={"env": "CREW_REFRESH_INTERVAL", "parse": _positive_float}
    )
    iss_timeout: float = field(default=2.0, metadata={"env": "ISS_TIMEOUT", "parse": _positive_float})
    # The layer's own tools (position, passes, crew) offered to the upstream model: on whenever an
    # upstream answers, unless ISS_TOOLS=off.
    iss_tools: bool = field(default=True, metadata={"env": "ISS_TOOLS", "parse": parse_bool})
    iss_tool_timeout: float = field(
        default=5.0, metadata={"env": "ISS_TOOL_TIMEOUT", "parse": _positive_float}
    )
    iss_tool_rounds: int = field(default=3, metadata={"env": "ISS_TOOL_ROUNDS", "parse": _positive_int})
    # At most this many of the layer's tool calls run per round (the rest get an error result the
    # model reads), and at most this many bytes of tool results go back upstream per request.
    iss_tool_max_calls: int = field(default=4, metadata={"env": "ISS_TOOL_MAX_CALLS", "parse": _positive_int})
    iss_tool_result_bytes: int = field(
        default=64 * 1024, metadata={"env": "ISS_TOOL_RESULT_BYTES", "parse": _positive_int}
    )
    # --- /iss* and pass searches bounded (issue 19) ---
    # Requests a minute (on average) and at once to /iss, /iss/passes and /iss/crew per caller address;
    # ISS_RATE_PER_MIN=0 turns the limit off.
    iss_rate_per_min: float = field(default=60.0, metadata={"env": "ISS_RATE_PER_MIN", "parse": _non_negative_float})
    iss_rate_burst: int = field(default=20, metadata={"env": "ISS_RATE_BURST", "parse": _positive_int})
    # Pass searches (the endpoint's and the tools') running at once in worker threads, and waiting.
    pass_searches: int = field(default=2, metadata={"env": "PASS_SEARCHES", "parse": _positive_int})
    pass_search_queue: int = field(default=8, metadata={"env": "PASS_SEARCH_QUEUE", "parse": _non_negative_int})
    iss_refresh_interval: float = field(
        default=5.0, metadata={"env": "ISS_REFRESH_INTERVAL", "parse": _positive_float}
    )
    tle_refresh_interval: float = field(
        default=2 * 3600.0, metadata={"env": "TLE_REFRESH_INTERVAL", "parse": _positive_float}
    )
    iss_cache_dir: Path = field(
        default=ROOT / "var" / "cache", metadata={"env": "ISS_CACHE_DIR", "parse": Path}
    )
    # The last-resort elements shipped with the project; empty turns the last resort off.
    bundled_tle: Path | None = field(
        default=BUNDLED_TLE, metadata={"env": "BUNDLED_TLE", "parse": _optional_path}
    )

    console_enabled: bool = field(default=True, metadata={"env": "CONSOLE_ENABLED", "parse": parse_bool})
    console_token: str | None = field(
        default=None, repr=False, metadata={"env": "CONSOLE_TOKEN", "parse": _console_token}
    )
    console_buffer: int = field(
        default=100, metadata={"env": "CONSOLE_BUFFER", "parse": _positive_int}
    )
    # The replay's bounds in bytes: the answer text kept per request (cut past it, with a marker),
    # and every kept request together (the oldest leave first).
    console_record_bytes: int = field(
        default=64 * 1024, metadata={"env": "CONSOLE_RECORD_BYTES", "parse": _positive_int}
    )
    console_buffer_bytes: int = field(
        default=16 * 1024 * 1024, metadata={"env": "CONSOLE_BUFFER_BYTES", "parse": _positive_int}
    )

    # ---- workers and the cluster (issue 11) ----
    # Worker processes sharing the listening socket; 0 means one per core.
    workers: int = field(default=1, metadata={"env": "WORKERS", "parse": _non_negative_int})
    # With a Redis URL the workers (of every host) share one console feed and one ISS poller.
    redis_url: str | None = field(
        default=None, repr=False, metadata={"env": "REDIS_URL", "parse": _redis_url}
    )

    log_level: str = field(
        default="info",
        metadata={"env": "LOG_LEVEL", "parse": _choice("debug", "info", "warning", "error")},
    )

    # --- metrics and logs (issue 12) ---
    metrics_enabled: bool = field(default=True, metadata={"env": "METRICS_ENABLED", "parse": parse_bool})
    # The operational endpoints (/metrics, /healthz's details). Unset: public only when the server has
    # no key and no METRICS_TOKEN; true: public on purpose; false: a key or METRICS_TOKEN always needed.
    metrics_public: bool | None = field(default=None, metadata={"env": "METRICS_PUBLIC", "parse": _optional_bool})
    # A bearer token for the operational endpoints alone (Prometheus' `authorization` credentials).
    metrics_token: str | None = field(
        default=None, repr=False, metadata={"env": "METRICS_TOKEN", "parse": _optional}
    )
    log_format: str = field(
        default="text", metadata={"env": "LOG_FORMAT", "parse": _choice("text", "json")}
    )
    # auto: uvloop where it is installed (requirements.txt pins it), else asyncio's own loop.
    event_loop: str = field(
        default="auto", metadata={"env": "EVENT_LOOP", "parse": _choice("auto", "uvloop", "asyncio")}
    )

    # --- agent platforms, browsers, traces (issue 21) ---
    # Whose request shape to read: auto recognises Tavus (conversation-id header), Vapi (a `call`
    # object) and the plain OpenAI shape; a name forces that platform's profile.
    platform: str = field(
        default="auto", metadata={"env": "PLATFORM", "parse": _choice("auto", "tavus", "vapi", "openai")}
    )
    # passthrough: every field the caller sent goes upstream (vendor extensions of vLLM, Ollama...);
    # openai: only OpenAI's chat-completion parameters (OpenAI answers 400 to any other).
    upstream_params: str = field(
        default="passthrough", metadata={"env": "UPSTREAM_PARAMS", "parse": _choice("passthrough", "openai")}
    )
    # Fields sent upstream whatever the two settings above leave out (e.g. top_k, or Vapi's metadata).
    upstream_extra_params: tuple[str, ...] = field(
        default=(), metadata={"env": "UPSTREAM_EXTRA_PARAMS", "parse": _names}
    )
    # Web pages (exact origins) allowed to call the chat and model routes from a browser, with the key.
    allowed_origins: tuple[str, ...] = field(default=(), metadata={"env": "ALLOWED_ORIGINS", "parse": _origins})
    # OpenTelemetry traces: off unless an OTLP/HTTP endpoint is set (the standard variable).
    otel_endpoint: str | None = field(
        default=None, metadata={"env": "OTEL_EXPORTER_OTLP_ENDPOINT", "parse": _optional}
    )
    otel_service_name: str = field(default="iss-llm", metadata={"env": "OTEL_SERVICE_NAME", "parse": str})
    # Prompt and answer text on the spans (the GenAI conventions' opt-in); off: counts and names only.
    otel_capture_content: bool = field(
        default=False, metadata={"env": "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "parse": parse_bool}
    )

    # Which .env file these settings were read from (None: none), for the start-up line.
    env_file: Path | None = field(default=None, compare=False)

    @property
    def use_openai(self) -> bool:
        """Whether chat goes to the openai upstream rather than the built-in responder."""
        return self.backend_choice[0]

    @property
    def backend_choice(self) -> tuple[bool, str]:
        """Whether the openai upstream answers (else the built-in responder), and why, in words."""
        if self.llm_backend == "openai":
            return True, "LLM_BACKEND=openai"
        if self.llm_backend == "builtin":
            return False, "LLM_BACKEND=builtin"
        if self.openai_api_key:
            return True, "OPENAI_API_KEY is set"
        if self.openai_base_url:
            # A keyless local server (Ollama, llama.cpp, vLLM) needs only its address.
            return True, "OPENAI_BASE_URL is set (no OPENAI_API_KEY: a keyless server)"
        return False, "neither OPENAI_API_KEY nor OPENAI_BASE_URL is set"

    @property
    def api_keys(self) -> tuple[tuple[str, str], ...]:
        """Every bearer key the chat routes accept, by name (SERVER_API_KEY's is "default")."""
        shared = ((SHARED_KEY_NAME, self.server_api_key),) if self.server_api_key else ()
        return (*shared, *self.server_api_keys)

    @property
    def ops_public(self) -> bool:
        """Whether /metrics and /healthz's details answer without a bearer token."""
        if self.metrics_public is not None:
            return self.metrics_public
        return not (self.api_keys or self.metrics_token)

    @property
    def forwarded_from(self) -> tuple[str, ...]:
        """The proxies whose forwarded headers are believed (see TRUSTED_PROXIES)."""
        if self.trusted_proxies:
            return self.trusted_proxies
        return ("127.0.0.1/32", "::1/128") if self.trust_proxy_headers else ()

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value of the settings, for redaction: never in a log line or an answer."""
        password = urlsplit(self.openai_base_url).password if self.openai_base_url else None
        values = (self.openai_api_key, self.console_token, self.metrics_token, *(key for _, key in self.api_keys),
                  *(value for _, value in self.upstream_headers), password)
        return tuple(value for value in values if value)

    @property
    def worker_count(self) -> int:
        """How many worker processes to run (WORKERS=0: one per core)."""
        return self.workers or os.cpu_count() or 1

    @property
    def listens_beyond_loopback(self) -> bool:
        return self.host not in {"127.0.0.1", "localhost", "::1"} and not self.host.startswith("127.")

    def with_overrides(self, **changes: Any) -> Settings:  # one value per field, each of its own type
        return replace(self, **changes)


def from_mapping(values: Mapping[str, str], base: Settings | None = None) -> Settings:
    """Settings from environment-style names; an invalid value raises ConfigError naming it."""
    changes: dict[str, Any] = {}  # field name -> the parsed value, of that field's own type
    for f in fields(Settings):
        name = f.metadata.get("env")
        if name is None or name not in values or values[name] is None:
            continue
        try:
            changes[f.name] = f.metadata["parse"](values[name])
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return replace(base or Settings(), **changes)


class _Find:
    """The marker of "look for .env" (find_env_file) rather than a given file or none."""


FIND = _Find()


def find_env_file(cwd: Path | None = None, beside: Path = ROOT) -> Path | None:
    """The .env to read: the working directory's, else the one beside server.py; None if neither exists."""
    for folder in (Path.cwd() if cwd is None else cwd, beside):
        candidate = folder / ".env"
        if candidate.is_file():
            return candidate.resolve()
    return None


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | _Find | None = FIND,
    beside: Path = ROOT,
) -> Settings:
    """Read .env (never overriding the real environment), the environment, then --host/--port.

    By default the .env is the working directory's, else the one beside server.py (`beside`), so a
    server started from elsewhere (a systemd unit without WorkingDirectory) still reads its own;
    `env_file` names one instead, or None reads none. Settings.env_file says which was read.
    """
    parser = argparse.ArgumentParser(description="ISS-aware OpenAI-compatible chat layer")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 5000)")
    parser.add_argument("--workers", type=int, help="worker processes (default 1; 0 = one per core)")
    args = parser.parse_args(argv)

    merged: dict[str, str] = {}
    path = find_env_file(beside=beside) if isinstance(env_file, _Find) else Path(env_file) if env_file else None
    if path is not None and path.is_file():
        merged.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    else:
        path = None
    merged.update(os.environ if environ is None else environ)
    settings = replace(from_mapping(merged), env_file=path)
    if args.host:
        settings = replace(settings, host=args.host)
    if args.port is not None:
        settings = replace(settings, port=args.port)
    if args.workers is not None:
        if args.workers < 0:
            raise ConfigError(f"--workers: must be 0 or more, got {args.workers}")
        settings = replace(settings, workers=args.workers)
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"PORT: must be between 0 and 65535, got {settings.port}")
    if settings.allowed_origins and not settings.api_keys:
        raise ConfigError("ALLOWED_ORIGINS: needs SERVER_API_KEY or SERVER_API_KEYS (without a key, any page a "
                          "browser opens could spend the upstream; the listed pages send the key)")
    if settings.metrics_public is False and not (settings.api_keys or settings.metrics_token):
        raise ConfigError("METRICS_PUBLIC: false needs SERVER_API_KEY, SERVER_API_KEYS or METRICS_TOKEN (what "
                          "/metrics then asks for)")
    if settings.server_api_key and settings.server_api_key in {key for _, key in settings.server_api_keys}:
        raise ConfigError("SERVER_API_KEYS: a named key equals SERVER_API_KEY")
    return settings
