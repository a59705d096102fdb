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
  every hop again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
_REDIRECTS = {301, 302, 303, 307, 308}


class BlockedDestination(Exception):
    """The URL may not be requested; the message says why."""


class UnresolvableHost(BlockedDestination):
    """The name does not resolve (now): nothing can be sent, but it may resolve later."""


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


def blocked_reason(address: IPAddress) -> str | None:
    """Why a request must not go to this address, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = blocked_reason(inner)
            return f"{reason} (embedded in {address})" if reason else None
    if address in _METADATA:
        return f"{address} is a cloud metadata address"
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
            return f"{address} is {article} {kind} address"
    return None


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
        except (socket.gaierror, UnicodeError) as exc:
            raise UnresolvableHost(f"cannot resolve {host!r}: {exc}") from exc
        except TimeoutError as exc:
            raise UnresolvableHost(f"resolving {host!r} timed out") from exc
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        if not addresses:
            raise BlockedDestination(f"{host!r} has no address")
    if not policy.allow_private:
        for address in addresses:
            reason = blocked_reason(address)
            if reason:
                where = "" if literal is not None else f"{host!r} resolves to {address}: "
                raise BlockedDestination(f"{where}{reason}; only public addresses are allowed")
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
    stream: bool = False,
    **kwargs: Any,
) -> httpx.Response:
    """Send a request to a checked address, pinned (the connection goes where the check looked).

    With `max_redirects` 0 a 3xx answer is returned as it is; otherwise redirects are followed
    up to that many hops, each hop checked like the first.
    """
    hops = 0
    while True:
        scheme, host, port = check_url(url)
        address = await resolve(host, port, policy)
        target, host_header = _pinned(url, host, address)
        request_headers = {**(headers or {}), "Host": host_header}
        extensions = {"sni_hostname": host} if scheme == "https" else {}
        request = client.build_request(method, target, headers=request_headers, extensions=extensions, **kwargs)
        response = await client.send(request, follow_redirects=False, stream=stream)
        location = response.headers.get("location")
        if response.status_code not in _REDIRECTS or not location or max_redirects == 0:
            return response
        await response.aclose()
        hops += 1
        if hops > max_redirects:
            raise BlockedDestination(f"more than {max_redirects} redirects")
        url = urljoin(url, location)
        if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
            # As browsers do: the redirected request is a GET without the body.
            method = "GET"
            kwargs = {k: v for k, v in kwargs.items() if k not in ("content", "json", "data", "files")}


_policy = Policy()


def configure_network(*, allow_private: bool) -> None:
    """Set this worker's policy for task activities (worker.py, from WFO_ALLOW_PRIVATE_NETWORKS)."""
    global _policy
    _policy = Policy(allow_private=allow_private)


def network_policy() -> Policy:
    return _policy
