"""The openai package's AsyncOpenAI, with the chat request built in a quarter of the time.

The SDK builds every request by parsing the base URL and the path again, joining them, then having
httpx2 parse the joined URL once more and merge the client's defaults: about 0.3 ms of the time
before a turn's request leaves, every turn. For the one request this server sends on each turn (a
POST of ready bytes to /chat/completions, no query, no files) the joined URL is kept per client,
and the rest is the SDK's own header builder (auth, default and per-request headers) and httpx2's
own `build_request`: the same request, byte for byte, as tests/upstream/test_openai_client.py checks
against the SDK's builder. Anything else takes the SDK's path. Retries, auth and status errors
stay the SDK's: only the builder it calls on each attempt is faster.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai
from openai._base_client import normalize_httpx2_timeout
from openai._models import FinalRequestOptions

CHAT_PATH = "/chat/completions"


class ChatClient(openai.AsyncOpenAI):
    """AsyncOpenAI whose POST /chat/completions of bytes skips the SDK's per-request URL parsing."""

    _chat_url: httpx2.URL | None = None

    @property
    def user_agent(self) -> str:
        # The SDK names the client by its class: upstreams keep seeing the SDK's own name.
        return f"{openai.AsyncOpenAI.__name__}/Python {self._version}"

    def _build_request(self, options: FinalRequestOptions, *, retries_taken: int = 0) -> httpx2.Request:
        if not self._plain_chat_post(options):
            return super()._build_request(options, retries_taken=retries_taken)
        if self._chat_url is None:
            self._chat_url = self._prepare_url(CHAT_PATH)
        headers = self._build_headers(options, retries_taken=retries_taken)
        if headers.get("Content-Type", "").startswith("multipart/form-data"):
            return super()._build_request(options, retries_taken=retries_taken)
        timeout: Any = self.timeout if isinstance(options.timeout, openai.NotGiven) else options.timeout
        return self._client.build_request(
            "POST", self._chat_url, headers=list(headers.multi_items()), content=options.content,
            timeout=normalize_httpx2_timeout(timeout),
        )

    def _plain_chat_post(self, options: FinalRequestOptions) -> bool:
        """A request the fast path builds exactly as the SDK would: bytes to /chat/completions, nothing more."""
        return (
            options.method == "post"
            and options.url == CHAT_PATH
            and isinstance(options.content, bytes)
            and options.json_data is None
            and options.extra_json is None
            and options.files is None
            and not options.params
            and not self.default_query
            and not self._auth_query(options.security)
            and isinstance(self._client, httpx2.AsyncClient)
        )
