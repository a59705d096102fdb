"""Outbound HTTP that cannot be pointed at the service's own network (SSRF guard).

Webhook deliveries, the webhook test endpoint and `http` tasks send requests to URLs that users
choose. Unless private networks are allowed (`WFO_ALLOW_PRIVATE_NETWORKS=true`, for tests and
local development), a request may only go to public addresses:

* every address the host name resolves to is checked, and the request connects to the address
  that was checked (no second lookup for a rebinding DNS server to answer differently);
* IPv4-mapped (`::ffff:127.0.0.1`), NAT64 (`64:ff9b::7f00:1`) and 6to4 forms are unwrapped;
* numeric hosts that are no IP literal to `ipaddress` (`2130706433`, `0177.0.0.1`, `0x7f.1`)
  are resolved by the system like any name, so they are checked as what they really are;
* redirects are never followed blindly: webhooks don't follow them at all, `http` tasks check
  every hop again, and a hop to another origin drops the credentials (`Authorization`, `Cookie`,
  `Proxy-Authorization` and any header the caller names as secret-bearing);
* errors name the host the user gave, never the private address it resolved to (that would map
  the internal network for whoever asks);
* a name that does not resolve is `UnresolvableHost`, not a refusal: DNS failures pass, so callers
  that retry (http tasks, webhook deliveries) retry it, and every attempt resolves and checks again;
* `read_capped` reads a streamed answer up to a number of decoded bytes, decompressing in bounded
  steps, so neither an endless body nor a gzip bomb can exhaust the process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_METADATA = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("fd00:ec2::254"),
    ipaddress.ip_address("100.100.100.200"),
}
_REDIRECTS = {301, 302, 303, 307, 308}
#: Request headers that carry credentials: a redirect never takes them to another origin.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
#: The content codings `read_capped` decodes; sent as Accept-Encoding unless the caller sets one.
ACCEPT_ENCODING = "gzip, deflate"
#: Most content codings stacked on one body (each costs a decompressor).
MAX_CODINGS = 3
#: Largest piece a decompressor may produce in one step.
_PIECE = 64 * 1024


class BlockedDestination(Exception):
    """The URL may not be requested; the message says why."""


class UnresolvableHost(Exception):
    """The name does not resolve (now): nothing can be sent, but it may resolve later.

    Not a BlockedDestination: that is a verdict on the URL, final; this is transient, like a
    refused connection. Whoever retries checks the name again on the next attempt.
    """


class ResponseTooLarge(Exception):
    """The answer's decoded body is longer than the reader's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the response body is over {limit} bytes")
        self.limit = limit


class UnsupportedEncoding(Exception):
    """The answer is encoded in a way `read_capped` does not decode."""


@dataclass(frozen=True, slots=True)
class Policy:
    allow_private: bool = False
    #: Seconds for name resolution.
    resolve_timeout: float = 5.0


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def _kind(address: IPAddress) -> str | None:
    """What kind of address forbids a request ("a loopback address"), or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            return _kind(inner)
    if address in _METADATA:
        return "a cloud metadata address"
    checks = (
        (address.is_loopback, "loopback"),
        (address.is_unspecified, "unspecified"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CARRIER_GRADE_NAT, "carrier-grade NAT"),
        (address.is_private, "private"),
        (address.is_reserved, "reserved"),
    )
    for matched, kind in checks:
        if matched:
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{article} {kind} address"
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why a request must not go to this address (which the user wrote), or None for a public one."""
    kind = _kind(address)
    if kind is None:
        return None
    if isinstance(address, ipaddress.IPv6Address) and (inner := _embedded_ipv4(address)) is not None:
        return f"{inner} is {kind} (embedded in {address})"
    return f"{address} is {kind}"


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int, policy: Policy) -> IPAddress:
    """The address to connect to: every address of the name must be allowed (the first is used)."""
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(policy.resolve_timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UnresolvableHost(f"cannot resolve {host!r}: {exc.strerror or exc}") from exc
        except UnicodeError as exc:
            # No DNS answer can fix a name that cannot be encoded (IDNA): not worth retrying.
            raise BlockedDestination(f"{host!r} is not a valid host name: {exc}") from exc
        except TimeoutError as exc:
            raise UnresolvableHost(
                f"cannot resolve {host!r}: no answer within {policy.resolve_timeout:g} s"
            ) from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))
        if not addresses:
            raise UnresolvableHost(f"cannot resolve {host!r}: no address")
    if not policy.allow_private:
        for address in addresses:
            kind = _kind(address)
            if kind is None:
                continue
            # A literal is what the user wrote; a name's addresses are not theirs to learn.
            reason = blocked_reason(address) if literal is not None else f"{host!r} resolves to {kind}"
            raise BlockedDestination(f"{reason}; only public addresses are allowed")
    return addresses[0]


def check_url(url: str) -> tuple[str, str, int]:
    """Scheme, host and port of an http(s) URL, or BlockedDestination saying what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BlockedDestination(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise BlockedDestination("only http and https URLs are allowed")
    if not parts.hostname:
        raise BlockedDestination("the URL has no host")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _pinned(url: str, host: str, address: IPAddress) -> tuple[str, str]:
    """The URL with its host replaced by the checked address, and the Host header to send."""
    parts = urlsplit(url)
    literal = f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)
    netloc = literal + (f":{parts.port}" if parts.port else "")
    host_header = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl(), host_header


async def guarded_request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    policy: Policy,
    max_redirects: int = 0,
    headers: dict[str, str] | None = None,
    secret_headers: Collection[str] = (),
    stream: bool = False,
    **kwargs: Any,
) -> httpx.Response:
    """Send a request to a checked address, pinned (the connection goes where the check looked).

    With `max_redirects` 0 a 3xx answer is returned as it is; otherwise redirects are followed
    up to that many hops, each hop checked like the first. A hop to another origin (scheme, host,
    port) goes without CREDENTIAL_HEADERS and `secret_headers` (names, any case), and they stay
    dropped for the hops after it.
    """
    hops = 0
    scheme, host, port = check_url(url)
    sent = httpx.Headers({"Accept-Encoding": ACCEPT_ENCODING})
    sent.update(headers or {})
    dropped = CREDENTIAL_HEADERS | {name.lower() for name in secret_headers}
    while True:
        address = await resolve(host, port, policy)
        target, host_header = _pinned(url, host, address)
        sent["Host"] = host_header
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        request = client.build_request(method, target, headers=sent, extensions=extensions, **kwargs)
        response = await client.send(request, follow_redirects=False, stream=stream)
        location = response.headers.get("location")
        if response.status_code not in _REDIRECTS or not location or max_redirects == 0:
            return response
        await response.aclose()
        hops += 1
        if hops > max_redirects:
            raise BlockedDestination(f"more than {max_redirects} redirects")
        url = urljoin(url, location)
        origin = (scheme, host, port)
        scheme, host, port = check_url(url)
        if (scheme, host, port) != origin:
            # As browsers and httpx do: credentials meant for one origin never reach another.
            for name in [name for name in sent if name in dropped]:
                del sent[name]
        if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
            # As browsers do: the redirected request is a GET without the body.
            method = "GET"
            kwargs = {k: v for k, v in kwargs.items() if k not in ("content", "json", "data", "files")}


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The decoded body of a streamed response; ResponseTooLarge once it passes `limit` bytes.

    Decoded here rather than by httpx, whose decoders inflate a whole network read at once: 64 KB
    of gzip bomb (or a few KB of gzip inside gzip) would become gigabytes before any count could
    stop it. Here every step yields at most 64 KB, and reading stops at the limit. Codings other
    than gzip and deflate raise UnsupportedEncoding; corrupt data raises httpx.DecodingError.
    """
    decoders = _decoders(response.headers.get_list("content-encoding", split_commas=True))
    body = bytearray()

    def take(pieces: Iterator[bytes]) -> None:
        for piece in pieces:
            if len(body) + len(piece) > limit:
                raise ResponseTooLarge(limit)
            body.extend(piece)

    try:
        async for chunk in response.aiter_raw():
            take(_decode(chunk, decoders))
        take(_flush(decoders))
    except zlib.error as exc:
        raise httpx.DecodingError(
            f"the response body is not valid {response.headers['content-encoding']}: {exc}"
        ) from None
    return bytes(body)


class _Inflater:
    """One gzip or deflate layer that decompresses in pieces of at most _PIECE bytes."""

    def __init__(self, coding: str) -> None:
        # "deflate" is meant to be zlib-wrapped, but some servers send it raw (httpx accepts both).
        self._raw_fallback = coding == "deflate"
        self._z = zlib.decompressobj(zlib.MAX_WBITS if self._raw_fallback else 16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data and not self._z.eof:
            try:
                out = self._z.decompress(data, _PIECE)
            except zlib.error:
                if not self._raw_fallback:
                    raise
                self._raw_fallback = False
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                continue
            self._raw_fallback = False
            data = self._z.unconsumed_tail
            if out:
                yield out

    def flush(self) -> bytes:
        return b"" if self._z.eof else self._z.flush()


def _decoders(codings: list[str]) -> list[_Inflater]:
    """The layers to undo, outermost first (Content-Encoding lists them in the order applied)."""
    layers = [coding.strip().lower() for coding in codings if coding.strip().lower() not in ("", "identity")]
    if len(layers) > MAX_CODINGS:
        raise UnsupportedEncoding(
            f"the response body has {len(layers)} content codings, more than {MAX_CODINGS}"
        )
    for coding in layers:
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise UnsupportedEncoding(
                f"the response body is encoded as {coding[:40]!r}; only gzip and deflate are read"
            )
    return [_Inflater(coding) for coding in reversed(layers)]


def _decode(data: bytes, layers: list[_Inflater]) -> Iterator[bytes]:
    """`data` through every layer, lazily: nothing is decompressed before the reader asks for it."""
    if not layers:
        if data:
            yield data
        return
    for piece in layers[0].feed(data):
        yield from _decode(piece, layers[1:])


def _flush(layers: list[_Inflater]) -> Iterator[bytes]:
    """What the layers still hold at the end of the body, each through the layers after it."""
    for index, layer in enumerate(layers):
        yield from _decode(layer.flush(), layers[index + 1 :])


_policy = Policy()


def configure_network(*, allow_private: bool) -> None:
    """Set this worker's policy for task activities (worker.py, from WFO_ALLOW_PRIVATE_NETWORKS)."""
    global _policy
    _policy = Policy(allow_private=allow_private)


def network_policy() -> Policy:
    return _policy
