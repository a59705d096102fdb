"""The pages we serve (Swagger UI at /docs, GraphiQL at /graphql) work without the internet.

Three layers:

* the pages as HTTP answers (in-process app): every script, style and image is a path of this
  service with an integrity hash that the served bytes match, and each page carries a policy that
  allows this service only. The same check runs on every HTML answer any GET route gives, so a
  page added later (a console) is held to the rule without a new test;
* the build step that brings the assets (api/pages/vendor.py) against a registry of real npm
  tarballs in a local folder: what does not match the lock is refused and nothing half-written;
* a real headless Chromium (Debian's, driven by Playwright) against a real API process, a worker
  and Temporal, with every request to a non-loopback origin blocked and counted: Swagger UI
  authorises with a token and runs `GET /api/workflows`; GraphiQL runs a query and receives
  subscription messages over its WebSocket. The counts of blocked requests, policy violations
  and page errors must all be 0. Screenshots are kept in build/test-artefacts/pages/
  (WFO_TEST_ARTEFACTS elsewhere), overwritten by the next run.

Without /usr/bin/chromium the browser tests are skipped, unless WFO_TEST_REQUIRE_BROWSER=1 (CI sets
it, and installs Chromium first): then they fail.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api import pages
from api.app import create_app
from api.pages import vendor
from api.settings import Settings
from tests.conftest import ADMIN_PASSWORD, make_settings, running_worker, temporal_address
from tests.processes import REPO, ApiClient, free_port, running_processes, server_client, wait_http_ready

CHROMIUM = Path(os.environ.get("WFO_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTEFACTS = Path(os.environ.get("WFO_TEST_ARTEFACTS", REPO / "build" / "test-artefacts")) / "pages"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
#: The pages a browser gets when WFO_API_DOCS is on.
PAGES = {"/docs": "Swagger UI", "/graphql": "GraphiQL"}


# --- the pages as HTTP answers --------------------------------------------------------------------


class _Links(HTMLParser):
    """Every URL an HTML document makes a browser load, with the integrity it declares."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str, str | None]] = []  # (tag, url, integrity)
        self.inline_scripts = 0
        self.inline_styles = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "style" in values:
            self.inline_styles += 1
        if tag == "style":
            self.inline_styles += 1
        if tag == "script":
            if values.get("src"):
                self.loads.append((tag, values["src"] or "", values.get("integrity")))
            else:
                self._in_script = True
        for name in ("href", "src"):
            if tag != "script" and values.get(name):
                self.loads.append((tag, values[name] or "", values.get("integrity")))
        if any(name.startswith("on") for name in values):
            self.inline_scripts += 1

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def links_of(html: str) -> _Links:
    parser = _Links()
    parser.feed(html)
    return parser


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for directive in filter(None, (part.strip() for part in policy.split(";"))):
        name, *values = directive.split()
        parsed[name] = values
    return parsed


def assert_self_only(policy: str, host: str) -> None:
    """A page's policy allows scripts, styles and connections from this service only."""
    parsed = directives(policy)
    assert parsed["default-src"] == ["'none'"], policy
    assert parsed["script-src"] == ["'self'"], policy
    assert parsed["style-src"] == ["'self'"], policy
    assert parsed["frame-ancestors"] == ["'none'"], policy
    assert parsed["base-uri"] == ["'none'"], policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, policy
    for name, values in parsed.items():
        for value in values:
            if value.startswith(("'", "data:")):
                continue
            # The only origin a policy names: this service's own WebSocket endpoint.
            assert urlsplit(value).netloc == host and value.startswith(("ws://", "wss://")), (name, value)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The pages do not touch the database: SQLite alone."""
    return f"sqlite:///{tmp_path / 'wfo.db'}"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """conftest's `app` and `client` with the pages on (as in dev mode)."""
    return make_settings(database_url, tmp_path, api_docs=True)


def get_paths(routes: list[Any], prefix: str = "") -> Iterator[str]:
    """The paths of every GET route, through routers included in routers (FastAPI wraps those)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from get_paths(included.routes, prefix + route.include_context.prefix)
        elif "GET" in (getattr(route, "methods", None) or ()):
            yield prefix + route.path


class TestPagesAsServed:
    @pytest.mark.parametrize("path", PAGES)
    async def test_everything_a_page_loads_comes_from_this_service_with_its_hash(
        self, client: httpx.AsyncClient, path: str
    ) -> None:
        response = await client.get(path, headers={"Accept": "text/html"})
        assert response.status_code == 200, response.text
        assert PAGES[path] in response.text
        assert response.headers["cache-control"] == "no-store"
        assert_self_only(response.headers["content-security-policy"], "testserver")
        links = links_of(response.text)
        assert links.inline_scripts == 0 and links.inline_styles == 0
        scripts = [load for load in links.loads if load[0] in ("script", "link")]
        assert len(scripts) >= 3, links.loads
        for tag, url, integrity in links.loads:
            assert url.startswith("/") and not url.startswith("//"), (tag, url)
            asset = await client.get(url)
            assert asset.status_code == 200, url
            if tag == "script" or (tag == "link" and url.endswith(".css")):
                assert integrity is not None and vendor.matches(integrity, asset.content), (url, integrity)

    async def test_graphiql_may_connect_to_its_websocket_only(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/graphql", headers={"Accept": "text/html"})
        connect = directives(response.headers["content-security-policy"])["connect-src"]
        assert connect == ["'self'", "ws://testserver/graphql", "wss://testserver/graphql"]
        # A Host that is not a plain host[:port] is not repeated into the policy.
        odd = await client.get("/graphql", headers={"Accept": "text/html", "Host": "x; script-src *"})
        assert directives(odd.headers["content-security-policy"])["connect-src"] == ["'self'"]

    async def test_vendored_files_are_cached_for_good_ours_revalidated(
        self, client: httpx.AsyncClient
    ) -> None:
        html = (await client.get("/docs")).text
        urls = [url for _, url, _ in links_of(html).loads]
        vendored = next(url for url in urls if "/vendor/" in url)
        own = next(url for url in urls if url.endswith("docs.js"))
        assert (await client.get(vendored)).headers["cache-control"] == pages.IMMUTABLE
        first = await client.get(own)
        assert first.headers["cache-control"] == pages.REVALIDATE
        again = await client.get(own, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304

    async def test_every_html_answer_of_every_route_keeps_the_rule(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        # Future pages included: each GET route without path parameters, asked for HTML.
        paths = sorted(path for path in get_paths(app.routes) if "{" not in path)
        assert {"/docs", "/graphql", "/healthz", "/api/workflows"} <= set(paths), paths
        html_pages = []
        for path in paths:
            response = await client.get(path, headers={"Accept": "text/html"})
            policy = response.headers["content-security-policy"]
            if not response.headers.get("content-type", "").startswith("text/html"):
                assert policy == "default-src 'none'; frame-ancestors 'none'", path
                continue
            html_pages.append(path)
            assert_self_only(policy, "testserver")
            for _, url, _ in links_of(response.text).loads:
                assert url.startswith("/") and not url.startswith("//"), (path, url)
        assert set(PAGES) <= set(html_pages), html_pages

    async def test_redoc_is_not_offered(self, client: httpx.AsyncClient) -> None:
        # Its bundle loads its logo from cdn.redoc.ly whatever the options (api/pages says more).
        assert (await client.get("/redoc")).status_code == 404

    async def test_without_the_assets_the_pages_say_so(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(pages, "assets_installed", lambda: False)
        for path in PAGES:
            response = await client.get(path, headers={"Accept": "text/html"})
            assert response.status_code == 503, path
            assert response.headers["content-type"] == "application/problem+json"
            assert "python api/pages/vendor.py" in response.json()["detail"]

    async def test_pages_and_assets_are_off_without_api_docs(self, tmp_path: Path) -> None:
        app = create_app(make_settings(f"sqlite:///{tmp_path / 'wfo.db'}", tmp_path, api_docs=False))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
                assert (await http.get("/docs")).status_code == 404
                assert (await http.get("/static/docs.js")).status_code == 404
                assert (await http.get("/graphql", headers={"Accept": "text/html"})).status_code == 404

    def test_the_installed_assets_match_the_lock(self) -> None:
        # What this checkout serves is exactly what the lock pins (the build fetched and checked it).
        assert vendor.main(["--check"]) == 0
        names = {package.name for package in vendor.load_lock()}
        assert names == {"swagger-ui-dist", "react", "react-dom", "graphiql", "@graphiql/plugin-explorer"}


# --- the build step: api/pages/vendor.py against a local registry ------------------------------


def _tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@dataclass
class Registry:
    """A folder laid out as npm's registry (file:// URLs): <registry>/<name>/-/<name>-<v>.tgz."""

    root: Path
    lock: Path
    vendor_dir: Path
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def publish(
        self, name: str, version: str, files: dict[str, bytes], pinned: dict[str, bytes] | None = None
    ) -> None:
        """Put a tarball in the registry and pin it in the lock (`pinned`: the bytes the lock expects)."""
        tarball = _tarball(files)
        target = self.root / name / "-" / f"{name.rsplit('/', 1)[-1]}-{version}.tgz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tarball)
        document = json.loads(self.lock.read_text()) if self.lock.exists() else {"packages": []}
        document["packages"].append(
            {
                "name": name,
                "version": version,
                "integrity": vendor.sri("sha512", _tarball(pinned) if pinned else tarball),
                "files": {path: vendor.sri("sha384", data) for path, data in (pinned or files).items()},
            }
        )
        self.lock.write_text(json.dumps(document))

    def pin_file(self, path: str, data: bytes) -> None:
        """Make the lock expect `data` at `path` of the last package published."""
        document = json.loads(self.lock.read_text())
        document["packages"][-1]["files"][path] = vendor.sri("sha384", data)
        self.lock.write_text(json.dumps(document))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(
        root=tmp_path / "registry", lock=tmp_path / "vendor.lock.json", vendor_dir=tmp_path / "vendor"
    )


class TestVendoring:
    def test_fetches_what_is_missing_then_nothing(self, registry: Registry) -> None:
        registry.publish(
            "@scope/widget", "1.2.3", {"dist/widget.js": b"window.widget = 1;\n", "LICENSE": b"MIT\n"}
        )
        registry.publish("plain", "0.1.0", {"plain.css": b"body{}\n"})
        fetched = vendor.ensure(registry.vendor_dir, registry.lock, registry.url, log=False)
        assert [p.name for p in fetched] == ["@scope/widget", "plain"]
        assert (
            registry.vendor_dir / "@scope__widget@1.2.3" / "dist" / "widget.js"
        ).read_bytes() == b"window.widget = 1;\n"
        assert vendor.ensure(registry.vendor_dir, registry.lock, registry.url, log=False) == []
        # A file changed on disk is noticed and fetched again.
        (registry.vendor_dir / "plain@0.1.0" / "plain.css").write_bytes(b"body{color:red}\n")
        assert [
            p.name for p in vendor.ensure(registry.vendor_dir, registry.lock, registry.url, log=False)
        ] == ["plain"]
        assert (registry.vendor_dir / "plain@0.1.0" / "plain.css").read_bytes() == b"body{}\n"

    def test_a_tarball_that_differs_from_the_lock_is_refused_and_nothing_written(
        self, registry: Registry
    ) -> None:
        registry.publish("evil", "1.0.0", {"evil.js": b"steal()\n"}, pinned={"evil.js": b"harmless()\n"})
        with pytest.raises(vendor.VendorError, match="does not match the lock's integrity"):
            vendor.ensure(registry.vendor_dir, registry.lock, registry.url, log=False)
        assert not any(registry.vendor_dir.rglob("*.js"))

    def test_a_file_that_differs_from_its_hash_is_refused(self, registry: Registry) -> None:
        registry.publish("pkg", "1.0.0", {"a.js": b"a\n"})
        registry.pin_file("a.js", b"something else")
        with pytest.raises(vendor.VendorError, match="a.js does not match"):
            vendor.ensure(registry.vendor_dir, registry.lock, registry.url, log=False)
        assert not (registry.vendor_dir / "pkg@1.0.0").exists()

    def test_a_pinned_file_missing_from_the_tarball_is_refused(self, registry: Registry) -> None:
        registry.publish("pkg", "1.0.0", {"a.js": b"a\n"})
        registry.pin_file("b.js", b"b\n")
        with pytest.raises(vendor.VendorError, match="has no b.js"):
            vendor.ensure(registry.vendor_dir, registry.lock, registry.url, log=False)

    def test_an_unreachable_registry_is_a_clear_error(self, registry: Registry, tmp_path: Path) -> None:
        registry.publish("pkg", "1.0.0", {"a.js": b"a\n"})
        with pytest.raises(vendor.VendorError, match="cannot download"):
            vendor.ensure(registry.vendor_dir, registry.lock, (tmp_path / "nowhere").as_uri(), log=False)
        with pytest.raises(vendor.VendorError, match="not an http"):
            vendor.ensure(registry.vendor_dir, registry.lock, "ftp://registry.example", log=False)

    def test_the_hashes_are_subresource_integrity_values(self) -> None:
        data = b"alert(1)"
        expected = "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()
        assert vendor.sri("sha384", data) == expected
        assert vendor.matches(expected, data) and not vendor.matches(expected, data + b" ")
        with pytest.raises(vendor.VendorError, match="unsupported"):
            vendor.matches("md5-AAAA", data)


# --- in a real browser, with the internet blocked -----------------------------------------------

BROWSER_REQUIRED = os.environ.get("WFO_TEST_REQUIRE_BROWSER") == "1"
#: Chromium's own background traffic off (it would be refused by this machine's closed network
#: anyway), and every host name but loopback unresolvable, a second line behind the route below.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
#: Reports Content-Security-Policy violations to the test (they are not requests: no route sees them).
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations = window.__violations || [];
  window.__violations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


def _browser_available() -> None:
    if CHROMIUM.exists():
        return
    message = f"no Chromium at {CHROMIUM}: apt-get install chromium (CI does)"
    if BROWSER_REQUIRED:
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Watch:
    """What a page did: requests (blocked ones apart), WebSockets, violations, errors."""

    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)  # WebSocket messages, for a failure's story
    errors: list[str] = field(default_factory=list)

    def websocket(self, socket: Any) -> None:
        self.websockets.append(socket.url)
        socket.on("framesent", lambda frame: self.frames.append(f"sent {str(frame)[:300]}"))
        socket.on("framereceived", lambda frame: self.frames.append(f"received {str(frame)[:300]}"))
        socket.on("close", lambda _: self.frames.append("closed"))

    def assert_offline_and_clean(self, violations: list[str]) -> None:
        assert self.blocked == [], f"requests to non-loopback origins: {self.blocked}"
        assert violations == [], f"Content-Security-Policy violations: {violations}"
        assert self.errors == [], f"page errors: {self.errors}"
        for url in self.requests + self.websockets:
            assert urlsplit(url).hostname in LOOPBACK_HOSTS or url.startswith("data:"), url


@dataclass
class Stack:
    base_url: str
    api: ApiClient


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, temporal_env: WorkflowEnvironment
) -> AsyncIterator[Stack]:
    """An API process (SQLite, pages on) and a worker, on the session's Temporal."""
    _browser_available()
    tmp = tmp_path_factory.mktemp("pages")
    unique = tmp.name.replace("-", "")[-10:]
    settings = make_settings(
        f"sqlite:///{tmp / 'wfo.db'}",
        tmp,
        api_docs=True,
        graphql_introspection=True,
        temporal_address=temporal_address(temporal_env),
        workflow_id_prefix=f"pages{unique}",
        system_task_queue=f"system-pages{unique}",
        default_task_queue=f"tasks-pages{unique}",
    )
    with running_processes(tmp / "logs") as procs:
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        process = procs.start_api(settings, port)
        await wait_http_ready(process, f"{base_url}/readyz")
        async with (
            running_worker(temporal_env.client, settings),
            server_client(base_url, timeout=60) as http,
        ):
            yield Stack(base_url, await ApiClient.login(http, "admin", ADMIN_PASSWORD))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def chromium(stack: Stack) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


@contextlib.asynccontextmanager
async def offline_page(chromium: Any) -> AsyncIterator[tuple[Any, Watch]]:
    """A page in a fresh browser context where only loopback answers; everything else is counted."""
    watch = Watch()
    context = await chromium.new_context(viewport={"width": 1280, "height": 900})

    async def route(route: Any) -> None:
        url = route.request.url
        if url.startswith("data:") or urlsplit(url).hostname in LOOPBACK_HOSTS:
            watch.requests.append(url)
            await route.continue_()
        else:
            watch.blocked.append(url)
            await route.abort("blockedbyclient")

    await context.route("**/*", route)
    await context.add_init_script(REPORT_VIOLATIONS)
    page = await context.new_page()
    page.on("websocket", watch.websocket)
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and watch.errors.append(message.text))
    try:
        yield page, watch
    finally:
        await context.close()


async def violations(page: Any) -> list[str]:
    return list(await page.evaluate("() => window.__violations || []"))


async def screenshot(page: Any, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=False)


def editor_value(selector: str) -> str:
    """JavaScript reading a GraphiQL (CodeMirror 5) editor's text. Waits use the function form
    (`() => ...`): a bare expression would be eval'd in the page, which its policy refuses."""
    return f"document.querySelector({json.dumps(selector + ' .CodeMirror')}).CodeMirror.getValue()"


RESPONSE = ".graphiql-response"


async def set_headers(page: Any, headers: dict[str, str]) -> None:
    """Open GraphiQL's Headers editor and put the headers (JSON) in it."""
    await page.get_by_text("Headers", exact=True).click()
    editor = ".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror"
    await page.locator(editor).wait_for()
    await page.evaluate(
        "([selector, text]) => document.querySelector(selector).CodeMirror.setValue(text)",
        [editor, json.dumps(headers)],
    )


async def wait_for_response(page: Any, text: str, watch: Watch, timeout: float = 30_000) -> dict[str, Any]:
    """GraphiQL's response pane once it shows `text`, parsed; what it showed instead on a timeout."""
    try:
        await page.wait_for_function(
            f"() => {editor_value(RESPONSE)}.includes({json.dumps(text)})", timeout=timeout
        )
    except Exception as exc:
        shown = await page.evaluate(f"() => {editor_value(RESPONSE)}")
        await screenshot(page, "graphiql-timeout")
        raise AssertionError(
            f"GraphiQL never showed {text!r}; it shows: {shown}\nWebSocket: {watch.frames}\nerrors: {watch.errors}"
        ) from exc
    return dict(json.loads(await page.evaluate(f"() => {editor_value(RESPONSE)}")))


@pytest.mark.slow
class TestInABrowserWithoutTheInternet:
    async def test_swagger_ui_authorises_and_lists_workflows(self, stack: Stack, chromium: Any) -> None:
        definition_id = await stack.api.define("shown-in-swagger", [{"id": "only", "name": "Only"}])
        token = stack.api.headers["Authorization"].removeprefix("Bearer ")
        async with offline_page(chromium) as (page, watch):
            await page.goto(f"{stack.base_url}/docs")
            await page.locator(".swagger-ui .info .title").wait_for()
            await page.click("button.authorize")
            await page.fill(".modal-ux input", token)
            await page.click(".modal-ux .auth-btn-wrapper button.authorize")
            await page.click(".modal-ux button.btn-done")
            operation = page.locator('.opblock-get:has(.opblock-summary-path[data-path="/api/workflows"])')
            await operation.locator(".opblock-summary").click()
            await operation.locator("button.try-out__btn").click()
            await operation.locator("button.execute").click()
            status = operation.locator(".live-responses-table tbody .response-col_status")
            await status.wait_for()
            body = operation.locator(".live-responses-table .response-col_description pre").first
            await body.scroll_into_view_if_needed()
            await screenshot(page, "swagger-ui-get-workflows")
            assert (await status.inner_text()).strip() == "200"
            listed = json.loads(await body.inner_text())
            assert (definition_id, "shown-in-swagger") in [(d["id"], d["name"]) for d in listed]
            watch.assert_offline_and_clean(await violations(page))
            assert any(url.endswith("/api/workflows?limit=10&offset=0") for url in watch.requests), (
                watch.requests
            )

    async def test_graphiql_runs_a_query_and_receives_subscription_messages(
        self, stack: Stack, chromium: Any
    ) -> None:
        definition_id = await stack.api.define(
            "watched-in-graphiql", [{"id": "review", "name": "Review", "type": "approval"}]
        )
        execution_id = (await stack.api.start(definition_id))["id"]
        async with offline_page(chromium) as (page, watch):
            await page.goto(f"{stack.base_url}/graphql")
            await page.locator(".graphiql-query-editor .CodeMirror").wait_for()
            # As a user does: the token under Headers, a query in the editor, then run.
            await set_headers(page, stack.api.headers)
            await page.evaluate(
                "(query) => document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(query)",
                "{ me { username role } }",
            )
            await page.click(".graphiql-execute-button")
            assert await wait_for_response(page, "username", watch) == {
                "data": {"me": {"username": "admin", "role": "admin"}}
            }
            await screenshot(page, "graphiql-query")

            # A shared link to a subscription: it opens in a tab of its own, which needs the token too.
            subscription = (
                f'subscription {{ workflowExecutionUpdated(id: "{execution_id}") {{ id status }} }}'
            )
            await page.goto(f"{stack.base_url}/graphql?q={quote(subscription)}")
            await page.locator(".graphiql-query-editor .CodeMirror").wait_for()
            await set_headers(page, stack.api.headers)
            await page.click(".graphiql-execute-button")
            await wait_for_response(page, "RUNNING", watch)
            waiting = await stack.api.wait_for(
                execution_id,
                lambda e: any(t["status"] == "WAITING" for t in e["taskExecutions"]),
                "the approval task waiting",
            )
            task_id = next(t["id"] for t in waiting["taskExecutions"] if t["status"] == "WAITING")
            approved = await stack.api.http.post(
                f"/api/tasks/{task_id}/complete", json={"output": {"ok": True}}, headers=stack.api.headers
            )
            assert approved.status_code == 200, approved.text
            completed = await wait_for_response(page, "COMPLETED", watch, timeout=60_000)
            await screenshot(page, "graphiql-subscription")
            assert completed == {
                "data": {"workflowExecutionUpdated": {"id": execution_id, "status": "COMPLETED"}}
            }
            assert watch.websockets == [f"ws://127.0.0.1:{urlsplit(stack.base_url).port}/graphql"]
            watch.assert_offline_and_clean(await violations(page))

    async def test_a_page_that_reaches_for_the_internet_is_caught(self, stack: Stack, chromium: Any) -> None:
        # The watch itself can fail: a script tag to a CDN, put into the served page, is blocked
        # by the policy (a violation) and a fetch the page's script makes is blocked and counted.
        async with offline_page(chromium) as (page, watch):
            await page.goto(f"{stack.base_url}/docs")
            await page.locator(".swagger-ui .info .title").wait_for()
            await page.evaluate(
                "() => { const s = document.createElement('script');"
                " s.src = 'https://cdn.jsdelivr.net/npm/x.js'; document.head.appendChild(s); }"
            )
            with contextlib.suppress(Exception):
                await page.evaluate("() => fetch('https://unpkg.com/y.js', {mode: 'no-cors'})")
            await page.wait_for_function("() => (window.__violations || []).length >= 2")
            found = await violations(page)
            assert any("cdn.jsdelivr.net" in v for v in found) and any("unpkg.com" in v for v in found), found
            # Where no policy stops it (a page without one), the route blocks and counts what leaves.
            blank = await page.context.new_page()
            await blank.set_content("<img src='https://example.com/pixel.png'>")
            await blank.wait_for_load_state()
            assert watch.blocked == ["https://example.com/pixel.png"], watch.blocked
