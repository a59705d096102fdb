"""The SSRF guard (activities/netguard.py) on its own: which addresses are refused and why, how
names and numeric hosts resolve, that a request connects to the address that was checked, and that
every redirect hop is checked again. Real name resolution (the system's), a real HTTP server on
loopback, the real `http` task activity under ActivityEnvironment; no mocks.

The per-hop check needs a first hop that is allowed and a later one that is not. With private
networks refused, nothing on this machine is an allowed first hop (every server a test can run is
on loopback), so those tests use `FirstHopsAllowed`: a policy (the two attributes `resolve` reads)
whose verdict is "private allowed" for the first N checks and "refused" afterwards. The address
checks, the DNS, the sockets and the server are real; only which hop stands for "public" is
scripted, and a control run with one more allowed hop shows the redirect is otherwise followed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator

import httpx
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import activities.tasks  # noqa: F401  (registers the built-in task types)
from activities.netguard import (
    BlockedDestination,
    Policy,
    UnresolvableHost,
    blocked_reason,
    check_url,
    configure_network,
    guarded_request,
    resolve,
)
from activities.registry import registry
from tests.loopback import LoopbackServer
from workflows.inputs import TaskInput

REFUSE = Policy(allow_private=False)
ALLOW = Policy(allow_private=True)


class FirstHopsAllowed:
    """A policy that allows private addresses for the first `allowed` checks only (see the module
    docstring). `checks` counts how often the guard asked."""

    resolve_timeout = 5.0

    def __init__(self, allowed: int = 1) -> None:
        self.allowed = allowed
        self.checks = 0

    @property
    def allow_private(self) -> bool:
        self.checks += 1
        return self.checks <= self.allowed


# --- which addresses, and why ------------------------------------------------------------------


class TestBlockedReason:
    @pytest.mark.parametrize(
        ("address", "reason"),
        [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.5.4", "private"),
            ("172.31.255.254", "private"),
            ("192.168.0.10", "private"),
            ("fd00::1", "private"),
            ("fc12:3456::1", "private"),
            ("169.254.10.20", "link-local"),
            ("fe80::1", "link-local"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("ff02::1", "multicast"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.254", "carrier-grade NAT"),
            ("169.254.169.254", "cloud metadata"),
            ("fd00:ec2::254", "cloud metadata"),
            ("100.100.100.200", "cloud metadata"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("240.0.0.1", "private|reserved"),  # Python's tables call 240/4 private
        ],
    )
    def test_refused_addresses_say_why(self, address: str, reason: str) -> None:
        text = blocked_reason(ipaddress.ip_address(address))
        assert text is not None and any(r in text for r in reason.split("|")) and address in text, text

    @pytest.mark.parametrize(
        ("address", "inner", "reason"),
        [
            ("::ffff:127.0.0.1", "127.0.0.1", "loopback"),  # IPv4-mapped
            ("::ffff:10.0.0.1", "10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "169.254.169.254", "cloud metadata"),
            ("64:ff9b::7f00:1", "127.0.0.1", "loopback"),  # NAT64 (well-known prefix)
            ("64:ff9b::a9fe:a9fe", "169.254.169.254", "cloud metadata"),
            ("64:ff9b:1::c0a8:1", "192.168.0.1", "private"),  # NAT64 (local-use prefix)
            ("2002:7f00:1::", "127.0.0.1", "loopback"),  # 6to4
        ],
    )
    def test_embedded_ipv4_is_unwrapped(self, address: str, inner: str, reason: str) -> None:
        text = blocked_reason(ipaddress.ip_address(address))
        assert text is not None and reason in text and inner in text and "embedded" in text, text

    @pytest.mark.parametrize(
        "address",
        [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.215.14",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "100.128.0.1",
        ],
    )
    def test_public_addresses_pass(self, address: str) -> None:
        assert blocked_reason(ipaddress.ip_address(address)) is None


# --- names and numeric hosts ---------------------------------------------------------------------


class TestResolve:
    @pytest.mark.parametrize(
        "host", ["localhost", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "0x7f000001"]
    )
    async def test_names_and_numeric_hosts_resolving_to_loopback_are_refused(self, host: str) -> None:
        with pytest.raises(BlockedDestination) as caught:
            await resolve(host, 80, REFUSE)
        assert not isinstance(caught.value, UnresolvableHost)
        # The host as given, never the address it resolved to (that would map the internal network).
        assert (
            str(caught.value) == f"{host!r} resolves to a loopback address; only public addresses are allowed"
        )

    @pytest.mark.parametrize(
        ("host", "reason"),
        [
            ("127.0.0.1", "127.0.0.1 is a loopback address"),
            ("[::1]", "::1 is a loopback address"),
            ("::1", "::1 is a loopback address"),
            ("[::ffff:127.0.0.1]", "127.0.0.1 is a loopback address (embedded in ::ffff:7f00:1)"),
            ("[64:ff9b::7f00:1]", "127.0.0.1 is a loopback address (embedded in 64:ff9b::7f00:1)"),
            ("169.254.169.254", "169.254.169.254 is a cloud metadata address"),
        ],
    )
    async def test_literals_are_checked_without_a_lookup(self, host: str, reason: str) -> None:
        with pytest.raises(BlockedDestination, match="only public addresses are allowed") as caught:
            await resolve(host, 80, REFUSE)
        assert str(caught.value).startswith(reason)

    async def test_allowed_private_networks_resolve_to_the_address(self) -> None:
        assert await resolve("localhost", 80, ALLOW) == ipaddress.ip_address("127.0.0.1")
        assert await resolve("2130706433", 80, ALLOW) == ipaddress.ip_address("127.0.0.1")
        assert await resolve("[::1]", 80, ALLOW) == ipaddress.ip_address("::1")

    async def test_public_literal_passes(self) -> None:
        assert await resolve("8.8.8.8", 443, REFUSE) == ipaddress.ip_address("8.8.8.8")

    async def test_a_name_that_does_not_resolve_is_unresolvable(self) -> None:
        with pytest.raises(UnresolvableHost, match="cannot resolve 'no-such-host.invalid'"):
            await resolve("no-such-host.invalid", 80, REFUSE)


class TestCheckUrl:
    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("ftp://example.com/file", "only http and https URLs are allowed"),
            ("file:///etc/passwd", "only http and https URLs are allowed"),
            ("javascript:alert(1)", "only http and https URLs are allowed"),
            ("gopher://127.0.0.1:6379/_INFO", "only http and https URLs are allowed"),
            ("not a url", "only http and https URLs are allowed"),
            ("http://", "the URL has no host"),
            ("http://[::1/x", "not a valid URL"),
            ("http://example.com:99999/", "not a valid URL"),
        ],
    )
    def test_bad_urls_say_what_is_wrong(self, url: str, message: str) -> None:
        with pytest.raises(BlockedDestination, match=message):
            check_url(url)

    def test_parts(self) -> None:
        assert check_url("https://Example.com/x") == ("https", "example.com", 443)
        assert check_url("http://[::1]:8080/x") == ("http", "::1", 8080)


# --- requests: pinned to the checked address, every hop checked -----------------------------------


@pytest.fixture
def recorded_client() -> Iterator[tuple[httpx.AsyncClient, list[httpx.Request]]]:
    """An httpx client that records every request it really sends (URL and headers on the wire)."""
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    client = httpx.AsyncClient(timeout=5, trust_env=False, event_hooks={"request": [record]})
    yield client, sent


class TestGuardedRequest:
    async def test_connects_to_the_checked_address_and_keeps_the_name_in_host(
        self, loopback: LoopbackServer, recorded_client: tuple[httpx.AsyncClient, list[httpx.Request]]
    ) -> None:
        client, sent = recorded_client
        loopback.route("/who", json={"ok": True})
        async with client:
            response = await guarded_request(
                client, "GET", f"http://localhost:{loopback.port}/who?q=1", policy=ALLOW
            )
        assert response.status_code == 200 and response.json() == {"ok": True}
        # The connection went to the address the guard resolved (no second lookup by httpx)...
        assert [str(r.url) for r in sent] == [f"http://127.0.0.1:{loopback.port}/who?q=1"]
        # ...while the server saw the name the URL gave.
        (received,) = loopback.requests_to("/who")
        assert received.headers["host"] == f"localhost:{loopback.port}"
        assert received.query == {"q": ["1"]}

    async def test_refused_destination_sends_nothing(
        self, loopback: LoopbackServer, recorded_client: tuple[httpx.AsyncClient, list[httpx.Request]]
    ) -> None:
        client, sent = recorded_client
        loopback.route("/who", json={"ok": True})
        async with client:
            for url in (
                loopback.url_for("/who"),
                f"http://localhost:{loopback.port}/who",
                f"http://2130706433:{loopback.port}/who",
            ):
                with pytest.raises(BlockedDestination, match="loopback"):
                    await guarded_request(client, "POST", url, policy=REFUSE, content=b"{}")
        assert sent == [] and loopback.requests == []

    @pytest.mark.parametrize(
        ("location", "reason"),
        [
            ("http://127.0.0.1:{port}/internal", "127.0.0.1 is a loopback address"),
            ("http://localhost:{port}/internal", "'localhost' resolves to a loopback address"),
            ("/internal", "127.0.0.1 is a loopback address"),  # same host: checked again all the same
            ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
            ("http://[::ffff:10.0.0.1]/", "10.0.0.1 is a private address (embedded in ::ffff:a00:1)"),
        ],
    )
    async def test_each_redirect_hop_is_checked_again(
        self,
        loopback: LoopbackServer,
        recorded_client: tuple[httpx.AsyncClient, list[httpx.Request]],
        location: str,
        reason: str,
    ) -> None:
        client, sent = recorded_client
        loopback.route("/start", status=302, headers={"Location": location.format(port=loopback.port)})
        loopback.route("/internal", json={"secret": "internal data"})
        policy = FirstHopsAllowed(1)
        async with client:
            with pytest.raises(BlockedDestination) as caught:
                await guarded_request(
                    client, "GET", loopback.url_for("/start"), policy=policy, max_redirects=5
                )  # type: ignore[arg-type]
        assert str(caught.value).startswith(reason) or reason in str(caught.value), caught.value
        assert policy.checks == 2, "one check per hop"
        assert [r.url.path for r in sent] == ["/start"], "the refused hop was never requested"
        assert loopback.requests_to("/internal") == []

    async def test_control_the_same_redirect_is_followed_when_its_hop_is_allowed(
        self, loopback: LoopbackServer, recorded_client: tuple[httpx.AsyncClient, list[httpx.Request]]
    ) -> None:
        client, sent = recorded_client
        loopback.route(
            "/start", status=302, headers={"Location": f"http://localhost:{loopback.port}/internal"}
        )
        loopback.route("/internal", json={"reached": True})
        policy = FirstHopsAllowed(2)
        async with client:
            response = await guarded_request(
                client, "GET", loopback.url_for("/start"), policy=policy, max_redirects=5
            )  # type: ignore[arg-type]
        assert response.json() == {"reached": True} and policy.checks == 2
        # The second hop is pinned too: connected to the address, the name in Host.
        assert [str(r.url) for r in sent] == [
            loopback.url_for("/start"),
            f"http://127.0.0.1:{loopback.port}/internal",
        ]
        assert loopback.requests_to("/internal")[0].headers["host"] == f"localhost:{loopback.port}"

    @pytest.mark.parametrize(
        ("location", "error", "message"),
        [
            ("file:///etc/passwd", BlockedDestination, "only http and https URLs are allowed"),
            ("gopher://127.0.0.1:6379/_FLUSHALL", BlockedDestination, "only http and https URLs are allowed"),
            ("http://no-such-host.invalid/x", UnresolvableHost, "cannot resolve 'no-such-host.invalid'"),
        ],
    )
    async def test_redirects_to_other_schemes_or_unknown_hosts_are_refused(
        self, loopback: LoopbackServer, location: str, error: type[Exception], message: str
    ) -> None:
        loopback.route("/start", status=301, headers={"Location": location})
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            with pytest.raises(error, match=message):
                await guarded_request(
                    client, "GET", loopback.url_for("/start"), policy=ALLOW, max_redirects=5
                )

    async def test_without_redirects_a_3xx_is_the_answer(self, loopback: LoopbackServer) -> None:
        """How webhooks send: max_redirects=0, the 3xx comes back and its Location is not visited."""
        loopback.route("/start", status=307, headers={"Location": "/internal"})
        loopback.route("/internal", json={})
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            response = await guarded_request(
                client, "POST", loopback.url_for("/start"), policy=ALLOW, content=b"{}"
            )
        assert response.status_code == 307
        assert loopback.requests_to("/internal") == []


# --- the http task refuses, without retrying --------------------------------------------------------


@pytest.fixture
def private_networks_refused() -> Iterator[None]:
    configure_network(allow_private=False)
    yield
    configure_network(allow_private=True)


async def run_http_task(url: str, **input: object) -> object:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_type="http", task_queue="wfo-tasks")
    task = TaskInput(
        execution_id="exec-1",
        task_id="fetch",
        task_type="http",
        input={"url": url, **input},
        queue="wfo-tasks",
    )
    return await env.run(registry.activity("http"), task)


@pytest.mark.usefixtures("private_networks_refused")
class TestHttpTaskRefused:
    @pytest.mark.parametrize(
        ("host", "reason"),
        [
            ("127.0.0.1", "127.0.0.1 is a loopback address"),
            ("localhost", "'localhost' resolves to a loopback address"),
            ("[::ffff:127.0.0.1]", "127.0.0.1 is a loopback address (embedded in ::ffff:7f00:1)"),
            ("[64:ff9b::7f00:1]", "127.0.0.1 is a loopback address (embedded in 64:ff9b::7f00:1)"),
            ("2130706433", "'2130706433' resolves to a loopback address"),
            ("0177.0.0.1", "'0177.0.0.1' resolves to a loopback address"),
            ("0x7f.1", "'0x7f.1' resolves to a loopback address"),
        ],
    )
    async def test_loopback_in_any_spelling_is_a_non_retryable_destination_refused(
        self, loopback: LoopbackServer, host: str, reason: str
    ) -> None:
        loopback.route("/admin", json={"secret": True})
        with pytest.raises(ApplicationError) as caught:
            await run_http_task(f"http://{host}:{loopback.port}/admin")
        error = caught.value
        assert error.type == "DestinationRefused" and error.non_retryable, error
        assert reason in error.message and "only public addresses are allowed" in error.message, error.message
        assert loopback.requests == []

    async def test_a_name_that_does_not_resolve_is_retried_not_refused(self) -> None:
        """Unlike a forbidden address, a DNS failure is transient: the task is retried, and each
        attempt resolves and checks the name again."""
        with pytest.raises(ApplicationError) as caught:
            await run_http_task("http://no-such-host.invalid/report")
        error = caught.value
        assert error.type == "UnresolvableHost" and not error.non_retryable, error
        assert "cannot resolve 'no-such-host.invalid'" in error.message and "refused" not in error.message

    @pytest.mark.parametrize(
        ("url", "reason"),
        [
            ("http://169.254.169.254/latest/meta-data/iam/", "cloud metadata"),
            ("http://10.0.0.5/", "private"),
            ("http://100.64.0.1/", "carrier-grade NAT"),
            ("http://[fe80::1]/", "link-local"),
        ],
    )
    async def test_other_internal_destinations(self, url: str, reason: str) -> None:
        with pytest.raises(ApplicationError) as caught:
            await run_http_task(url)
        assert caught.value.type == "DestinationRefused" and caught.value.non_retryable
        assert reason in caught.value.message
