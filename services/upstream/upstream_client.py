"""The HTTP side of the upstream: one aiohttp session per process, each request sent and its failure told apart.

What the openai package gave, kept: the bearer key and any configured headers on every request,
the base URL joined as the package joins it (`OPENAI_BASE_URL` + `/chat/completions`), timeouts to
connect, to the answer's head and between two reads, `UPSTREAM_MAX_RETRIES` retries with backoff,
proxies from the environment, TLS verification, and each status kept for the error the caller gets.
Added: one immediate retry when a pooled keep-alive connection turns out dead before any answer came
back (the upstream closed it while it idled), and a stream read to its end hands its connection back
to the pool instead of closing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from config import Settings
from services.ops.tracing import upstream_headers
from services.upstream.bounded import ACCEPT_ENCODING, read_body

log = logging.getLogger("iss_llm.upstream")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# What the openai package retries (with UPSTREAM_MAX_RETRIES above 0): timeouts, conflicts, rate limits, 5xx.
RETRY_STATUSES = frozenset({408, 409, 429} | set(range(500, 600)))
MAX_BACKOFF = 8.0
# A finished stream's last bytes (the chunked terminator) may come a moment after [DONE]: read them
# in the background, at most this long and this much, so the connection goes back to the pool.
DRAIN_SECONDS = 1.0
DRAIN_BYTES = 64 * 1024


class UpstreamStatusError(Exception):
    """The upstream answered with a status other than 2xx: the status, its (bounded) body, the URL called."""

    def __init__(self, status: int, body: bytes, method: str, url: str, location: str | None = None) -> None:
        super().__init__(f"{method} {url} answered {status}")
        self.status = status
        self.body = body
        self.method = method
        self.url = url
        self.location = location


class UpstreamUnreachable(Exception):
    """No answer began: the connection, DNS, TLS or the proxy failed, or the connection died first."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause) or type(cause).__name__)
        self.cause = cause


def shown_url(url: str | URL) -> str:
    """scheme://host:port/path of a URL: no user, password or query."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "?"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"


def proxy_for(url: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for `url` (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), and its credentials.

    The standard library's reading of the variables, as aiohttp's `trust_env` reads them, done once:
    with `trust_env` aiohttp would also look for a ~/.netrc on a thread for every request.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        return None, None
    netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(netloc):
        return None, None
    given = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    auth = None
    if given.username is not None:
        auth = aiohttp.BasicAuth(unquote(given.username), unquote(given.password or ""))
    host = given.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{given.port}" if given.port else ""
    return urlunsplit((given.scheme, netloc, given.path, "", "")), auth


class _Attempt:
    """Per request, for the session's trace: whether the connection came from the pool."""

    __slots__ = ("reused",)

    def __init__(self) -> None:
        self.reused = False


async def _on_reused(session: aiohttp.ClientSession, context: object, params: object) -> None:
    attempt = getattr(context, "trace_request_ctx", None)
    if isinstance(attempt, _Attempt):
        attempt.reused = True


class UpstreamClient:
    """Requests to one OpenAI-compatible server over a shared keep-alive pool (bounded per host)."""

    def __init__(self, settings: Settings) -> None:
        base = (settings.openai_base_url or DEFAULT_BASE_URL).strip()
        parts = urlsplit(base)
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Accept"] = "application/json"
        headers["Content-Type"] = "application/json"
        headers["Accept-Encoding"] = ACCEPT_ENCODING  # aiohttp inflates these two, a step at a time
        if settings.openai_api_key:
            headers["Authorization"] = f"Bearer {settings.openai_api_key}"
        if settings.openai_org_id:
            headers["OpenAI-Organization"] = settings.openai_org_id
        if settings.openai_project_id:
            headers["OpenAI-Project"] = settings.openai_project_id
        for name, value in settings.upstream_headers:
            headers[name] = value
        self._headers = headers
        # user:password in the base URL: basic auth, unless a key (or a configured header) authorizes.
        self._auth = None
        if parts.username is not None and "Authorization" not in headers:
            self._auth = aiohttp.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
        # The base URL as the openai package joins it: the path with one trailing slash, then the route.
        self.base_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
        self.chat_url = self._url("chat/completions")
        self.models_url = self._url("models")
        self.proxy, self._proxy_auth = proxy_for(self.base_url)
        self._max_bytes = settings.upstream_max_bytes
        self._max_retries = settings.upstream_max_retries
        self._per_host = settings.max_connections  # an upstream stream per caller connection, at most
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.upstream_timeout,  # a free connection from the pool, or a new one
            sock_connect=settings.upstream_connect_timeout,  # a new connection (TCP and TLS)
            sock_read=settings.upstream_timeout,  # to the answer's head, then between two reads
        )
        self._trace = aiohttp.TraceConfig()
        self._trace.on_connection_reuseconn.append(_on_reused)
        self._session: aiohttp.ClientSession | None = None
        self._draining: dict[asyncio.Task[None], aiohttp.ClientResponse] = {}

    def _url(self, route: str) -> URL:
        parts = urlsplit(self.base_url)
        return URL(urlunsplit((parts.scheme, parts.netloc, f"{parts.path}/{route}", parts.query, "")))

    def _session_now(self) -> aiohttp.ClientSession:
        """The process's session, made on first use inside the running loop."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._per_host)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self.timeout, trace_configs=[self._trace], auto_decompress=True,
            )
        return self._session

    async def send(self, method: str, url: URL, body: bytes | None = None, *, request_id: str | None = None,
                   timeout: aiohttp.ClientTimeout | None = None) -> aiohttp.ClientResponse:
        """The upstream's answer with a 2xx status, body unread; UpstreamStatusError (body read) otherwise.

        Timeouts raise asyncio.TimeoutError; a failure before any answer, UpstreamUnreachable.
        """
        session = self._session_now()
        headers = self._headers
        trace_context = upstream_headers()  # the upstream round's traceparent, when tracing is on
        if request_id is not None or trace_context:
            headers = headers.copy()
            if request_id is not None:
                headers["X-Request-Id"] = request_id
            if trace_context:
                headers.update(trace_context)
        retries = 0
        stale_retry = True
        while True:
            attempt = _Attempt()
            try:
                response = await session.request(
                    method, url, data=body, headers=headers, auth=self._auth, proxy=self.proxy,
                    proxy_auth=self._proxy_auth, allow_redirects=False, timeout=timeout or self.timeout,
                    trace_request_ctx=attempt,
                )
            except TimeoutError:
                if retries < self._max_retries:
                    retries += 1
                    await asyncio.sleep(_backoff(retries))
                    continue
                raise
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if stale_retry and attempt.reused and not isinstance(exc, aiohttp.ClientConnectorError):
                    # A kept-alive connection the upstream had closed: nothing was answered on it.
                    stale_retry = False
                    log.debug("a pooled upstream connection was closed (%s): sending again", type(exc).__name__)
                    continue
                if retries < self._max_retries:
                    retries += 1
                    await asyncio.sleep(_backoff(retries))
                    continue
                raise UpstreamUnreachable(exc) from exc
            except aiohttp.ClientError as exc:
                raise UpstreamUnreachable(exc) from exc
            if 200 <= response.status < 300:
                return response
            try:
                error_body = await read_body(response, self._max_bytes)
            finally:
                response.release()
            if response.status in RETRY_STATUSES and retries < self._max_retries:
                retries += 1
                await asyncio.sleep(_backoff(retries, response.headers.get("Retry-After")))
                continue
            raise UpstreamStatusError(response.status, error_body, method, shown_url(url),
                                      response.headers.get("Location"))

    def finish(self, response: aiohttp.ClientResponse, read_to_end: bool) -> None:
        """Done with a streamed answer: its connection back to the pool when it was read to its end, else closed."""
        if not read_to_end:
            response.close()
        elif response.content.at_eof():
            response.release()
        else:
            task = asyncio.ensure_future(self._drain(response))
            self._draining[task] = response
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._draining.pop(task, None)

    async def _drain(self, response: aiohttp.ClientResponse) -> None:
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                size = 0
                async for piece in response.content.iter_any():
                    size += len(piece)
                    if size > DRAIN_BYTES:
                        break
        except (TimeoutError, aiohttp.ClientError):
            pass
        finally:
            if response.content.at_eof():
                response.release()
            else:
                response.close()

    async def drained(self) -> None:
        """Once every finished stream's last bytes were read (or given up on) and its connection settled."""
        await asyncio.gather(*self._draining, return_exceptions=True)

    async def close(self) -> None:
        for task, response in list(self._draining.items()):
            task.cancel()
            response.close()  # a task cancelled before its first step never reaches its own `finally`
        await self.drained()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _backoff(retry: int, retry_after: str | None = None) -> float:
    """Seconds before retry number `retry`: the upstream's Retry-After when short, else 0.5 s doubling, jittered."""
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            seconds = float(retry_after)
            if 0 <= seconds <= MAX_BACKOFF:
                return seconds
    return min(0.5 * 2 ** (retry - 1), MAX_BACKOFF) * (1 - 0.25 * random.random())
