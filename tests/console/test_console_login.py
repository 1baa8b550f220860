"""The console login (issue 19, finding 9): the right token always gets in; wrong ones are throttled per
address and in total, across workers through Redis; X-Forwarded-For is believed from TRUSTED_PROXIES only."""

from __future__ import annotations

import asyncio

import pytest
from tornado.httpclient import AsyncHTTPClient

from config import load_settings
from services.console.login_throttle import PER_ADDRESS, TOTAL
from services.ops.forwarded import TrustedProxies, address_key
from tests.ops.test_workers import serving, wait_until
from tests.server.test_server_process import ServerProcess, _env
from tests.support import connection_owner

TOKEN = "test-console-token"
WRONG = "/console?token=guess-0123456789abcdef"


async def _get(base_url: str, path: str, headers: dict[str, str] | None = None):
    return await AsyncHTTPClient().fetch(base_url + path, headers=headers or {}, raise_error=False,
                                         follow_redirects=False, request_timeout=10)


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


@pytest.mark.parametrize("overrides", [{}, {"trusted_proxies": ("10.9.9.9/32",)}], ids=["no-proxy", "other-proxy"])
async def test_forwarded_for_from_an_untrusted_peer_is_ignored(base_url, overrides):
    # A rotating X-Forwarded-For from a peer that is no trusted proxy: every guess is this peer's.
    codes = [(await _get(base_url, WRONG, _from(f"203.0.113.{n}"))).code for n in range(PER_ADDRESS + 3)]
    assert codes == [403] * PER_ADDRESS + [429] * 3
    # Nor can it pose as another address: the operator's (here 198.51.100.7 behind no proxy) is not
    # the one counted, and the right token gets in anyway.
    assert (await _get(base_url, f"/console?token={TOKEN}", _from("198.51.100.7"))).code == 303


@pytest.mark.parametrize("overrides", [{"trust_proxy_headers": True}])
async def test_behind_a_trusted_proxy_each_caller_counts_alone_and_all_of_them_in_total(base_url, overrides):
    # TRUST_PROXY_HEADERS=true alone trusts loopback (nginx on the same host): the address is the one
    # the proxy appended, right-most; what the caller wrote to its left is not believed.
    victim = _from("198.51.100.7")
    assert [(await _get(base_url, WRONG, victim)).code for _ in range(PER_ADDRESS + 1)] == [403] * PER_ADDRESS + [429]
    spoofed = _from("198.51.100.7, 203.0.113.1")  # the caller's own claim, then what the proxy saw
    assert (await _get(base_url, WRONG, spoofed)).code == 403  # counted as 203.0.113.1, not the victim
    # Rotating addresses get past the per-address count, not past the total.
    codes = [(await _get(base_url, WRONG, _from(f"203.0.{n // 250}.{n % 250 + 2}"))).code for n in range(TOTAL)]
    earlier = PER_ADDRESS + 2  # the victim's and the spoofed one's
    assert codes == [403] * (TOTAL - earlier) + [429] * earlier, codes
    # Through all that, the right token always gets in, from anywhere.
    for headers in (victim, _from("203.0.113.1"), {}):
        assert (await _get(base_url, f"/console?token={TOKEN}", headers)).code == 303


def test_trusted_proxies_default_and_parsing():
    def load(**env: str):
        return load_settings([], environ=env, env_file=None)

    assert load().forwarded_from == ()
    assert load(TRUST_PROXY_HEADERS="true").forwarded_from == ("127.0.0.1/32", "::1/128")
    assert load(TRUSTED_PROXIES="10.0.0.0/8, 192.168.1.5").forwarded_from == ("10.0.0.0/8", "192.168.1.5/32")
    assert load(TRUSTED_PROXIES="*").forwarded_from == ("*",)
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        load(TRUSTED_PROXIES="10.0.0.0/8, nginx")


def test_the_client_address_is_the_right_most_untrusted_hop():
    proxies = TrustedProxies(("10.0.0.0/8", "127.0.0.1/32"))
    assert proxies.client("127.0.0.1", "1.1.1.1, 2.2.2.2", None) == "2.2.2.2"
    assert proxies.client("127.0.0.1", "1.1.1.1, 2.2.2.2, 10.1.2.3", None) == "2.2.2.2"  # two proxies
    assert proxies.client("127.0.0.1", "10.1.1.1, 10.2.2.2", None) == "10.1.1.1"  # all proxies: the first
    assert proxies.client("127.0.0.1", None, "3.3.3.3") == "3.3.3.3"
    # A right-most hop that is no address: the peer, never the caller's own X-Real-Ip.
    assert proxies.client("127.0.0.1", "not-an-ip", "3.3.3.3") == "127.0.0.1"
    assert proxies.client("127.0.0.1", "203.0.113.9:5555", "6.6.6.6") == "127.0.0.1"
    assert proxies.client("192.0.2.9", "1.1.1.1", "3.3.3.3") == "192.0.2.9"  # an untrusted peer
    assert proxies.client("::ffff:127.0.0.1", "2001:db8::1", None) == "2001:db8::1"
    assert TrustedProxies(()).client("127.0.0.1", "1.1.1.1", "3.3.3.3") == "127.0.0.1"
    assert TrustedProxies(("*",)).client("192.0.2.9", "1.1.1.1", None) == "1.1.1.1"
    # Any peer trusted: only the hop the nearest proxy added; what the caller wrote to its left is not.
    assert TrustedProxies(("*",)).client("10.0.0.5", "6.6.6.6, 203.0.113.9", None) == "203.0.113.9"
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff") == "2001:db8::/64"
    assert address_key("::ffff:1.2.3.4") == "1.2.3.4" and address_key("junk") == "?"


async def _raw_get(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, path: str) -> int:
    """One GET on a kept-alive connection; its status (the body, small, read and dropped)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await asyncio.wait_for(reader.readexactly(length), 10)
    return int(head.split(b" ", 2)[1])


async def test_two_workers_share_the_counts_through_redis(io_loop, tmp_path, redis_server):
    # Issue 19, finding 9: each worker counted alone, so N workers allowed N times the guesses.
    server = ServerProcess(_env(tmp_path, REDIS_URL=redis_server.url, CONSOLE_TOKEN=TOKEN), "--port", "0",
                           "--workers", "2")
    await server.start()
    connections: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
    spare: list[asyncio.StreamWriter] = []
    try:
        port = await server.listening_port()
        await wait_until(lambda: len(serving(server)) == 2, 60, "two workers serving")
        workers = serving(server)
        while len(connections) < 2 and len(spare) < 40:  # one kept-alive connection to each worker
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            owner = connection_owner(writer, workers)
            if owner in connections or not owner:
                spare.append(writer)
            else:
                connections[owner] = (reader, writer)
        assert set(connections) == workers
        a, b = (connections[pid] for pid in sorted(workers))
        codes = []
        for index in range(PER_ADDRESS + 1):  # alternating: each worker sees about half of them
            reader, writer = a if index % 2 else b
            codes.append(await _raw_get(writer, reader, WRONG))
        assert codes == [403] * PER_ADDRESS + [429], codes
        for reader, writer in (a, b):  # and the right token, on either worker
            assert await _raw_get(writer, reader, f"/console?token={TOKEN}") == 303
        for _, writer in connections.values():
            writer.close()
        assert await server.stop() == 0
        server.assert_clean_output()
    finally:
        for writer in spare:
            writer.close()
        server.kill()
