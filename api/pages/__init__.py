"""The HTML pages the API serves: Swagger UI (`/docs`) and GraphiQL (`/graphql` in a browser).

Every script, style, font and image of these pages comes from this service: our own files in
`static/`, and the built files of the npm packages pinned in `vendor.lock.json`, fetched at build
time into `static/vendor/` (vendor.py, run by setup.py) and shipped in the wheel and the image.
Nothing is loaded from a third-party origin, at run time or in the browser, so the pages work on a
machine without internet access and a page holding an admin's token runs no code from a CDN.

The templates hold no inline script or style, which lets each page carry a Content-Security-Policy
that allows scripts, styles and connections from this service only (plus GraphiQL's WebSocket
endpoint), images and fonts from it or `data:` URLs (the vendored CSS embeds its fonts and icons),
and nothing else. Scripts and stylesheets carry Subresource Integrity hashes: the lock's for the
vendored files, computed at start for ours.

```python
app.mount(STATIC_PATH, static_files(), name="static")  # create_app does this when WFO_API_DOCS is on
router = pages_router(app)                               # GET /docs
html = graphiql_page(request)                            # what GET /graphql answers a browser
```
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from api.errors import ServiceUnavailable
from api.pages import vendor

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"
#: Where static/ is served.
STATIC_PATH = "/static"
#: Vendored files are versioned by folder (`react@18.2.0/...`): cached for a year.
IMMUTABLE = "public, max-age=31536000, immutable"
#: Our own files change with a release: revalidated (ETag) on every use.
REVALIDATE = "no-cache"

#: A Host header we are willing to repeat in a policy: a name or IP literal and a port, nothing else.
_HOST = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


@dataclass(frozen=True)
class Asset:
    """A script or stylesheet a page links, with its Subresource Integrity value."""

    path: str  # below static/
    integrity: str

    def url(self, root: str) -> str:
        return f"{root}{STATIC_PATH}/{self.path}"


def vendored(package_name: str, file: str) -> Asset:
    """A file of a pinned npm package, with the lock's hash."""
    package = _packages()[package_name]
    return Asset(f"vendor/{package.folder}/{file}", package.files[file])


def own(file: str) -> Asset:
    """One of our files in static/, hashed once, when this module is imported (an edit to the file
    needs a restart, or browsers refuse it)."""
    return Asset(file, vendor.sri("sha384", (STATIC_DIR / file).read_bytes()))


@cache
def _packages() -> dict[str, vendor.Package]:
    return {package.name: package for package in vendor.load_lock()}


@cache
def assets_installed() -> bool:
    """Whether every pinned file is on disk and matches the lock (checked once per process)."""
    return all(vendor.present(package) for package in _packages().values())


@dataclass(frozen=True)
class Page:
    template: str
    styles: tuple[Asset, ...]
    scripts: tuple[Asset, ...]
    #: GraphiQL talks to its endpoint over WebSocket too.
    websocket_path: str | None = None

    def render(self, request: Request, **values: str) -> HTMLResponse:
        if not assets_installed():
            raise ServiceUnavailable(
                "The pages' browser assets are not installed (api/pages/static/vendor): reinstall the "
                "package, or run `python api/pages/vendor.py` in a source checkout."
            )
        root = request.scope.get("root_path", "")
        text = _template(self.template).substitute(
            title=html.escape(request.app.title),
            static=html.escape(root + STATIC_PATH),
            styles=_tags(_stylesheet, self.styles, root),
            scripts=_tags(_script, self.scripts, root),
            **{name: html.escape(value) for name, value in values.items()},
        )
        websocket = root + self.websocket_path if self.websocket_path else None
        return HTMLResponse(
            text,
            headers={"Content-Security-Policy": page_policy(request, websocket), "Cache-Control": "no-store"},
        )


@cache
def _template(name: str) -> Template:
    return Template((TEMPLATES_DIR / name).read_text())


def _tags(render: Callable[[Asset, str], str], assets: Iterable[Asset], root: str) -> str:
    return "\n    ".join(render(asset, root) for asset in assets)


def _stylesheet(asset: Asset, root: str) -> str:
    return f'<link rel="stylesheet" href="{html.escape(asset.url(root))}" integrity="{asset.integrity}">'


def _script(asset: Asset, root: str) -> str:
    return f'<script src="{html.escape(asset.url(root))}" integrity="{asset.integrity}"></script>'


def page_policy(request: Request, websocket_path: str | None = None) -> str:
    """The Content-Security-Policy of a page: this service only, and nothing inline.

    `connect-src 'self'` covers fetches to this origin; a WebSocket endpoint is named in full
    (ws: and wss:, since a TLS-terminating proxy may stand in front) when the Host is plain.
    """
    connect = ["'self'"]
    host = request.headers.get("host", "")
    if websocket_path and _HOST.match(host):
        connect += [f"ws://{host}{websocket_path}", f"wss://{host}{websocket_path}"]
    directives = {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "connect-src": " ".join(connect),
        # The vendored stylesheets embed their fonts and icons as data: URLs.
        "img-src": "'self' data:",
        "font-src": "'self' data:",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


SWAGGER_UI = Page(
    "docs.html",
    styles=(vendored("swagger-ui-dist", "swagger-ui.css"),),
    scripts=(vendored("swagger-ui-dist", "swagger-ui-bundle.js"), own("docs.js")),
)
GRAPHIQL = Page(
    "graphiql.html",
    styles=(
        vendored("graphiql", "graphiql.min.css"),
        vendored("@graphiql/plugin-explorer", "dist/style.css"),
        own("pages.css"),
    ),
    scripts=(
        vendored("react", "umd/react.production.min.js"),
        vendored("react-dom", "umd/react-dom.production.min.js"),
        vendored("graphiql", "graphiql.min.js"),
        vendored("@graphiql/plugin-explorer", "dist/index.umd.js"),
        own("graphiql.js"),
    ),
    websocket_path="/graphql",
)


def graphiql_page(request: Request) -> HTMLResponse:
    return GRAPHIQL.render(request, graphql_url=request.scope.get("root_path", "") + "/graphql")


def pages_router(app: FastAPI, docs_path: str = "/docs") -> APIRouter:
    """Swagger UI, reading the app's OpenAPI document.

    ReDoc is not offered: its bundle loads its logo from cdn.redoc.ly (hard-coded, whatever the
    options; 3.x adds icons from a CDN and telemetry), injects <style> elements before it can be
    given a nonce and starts its search worker from a blob: a page that runs it cannot keep the
    no-third-party rule or the policy above.
    """
    router = APIRouter(include_in_schema=False)

    def openapi_url(request: Request) -> str:
        return request.scope.get("root_path", "") + (app.openapi_url or "/openapi.json")

    @router.get(docs_path)
    async def swagger_ui(request: Request) -> HTMLResponse:
        config = json.dumps(app.swagger_ui_parameters or {})
        return SWAGGER_UI.render(request, openapi_url=openapi_url(request), config=config)

    return router


class _StaticFiles(StaticFiles):
    """static/ with caching that fits each file: versioned vendor files forever, ours revalidated."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = IMMUTABLE if path.startswith("vendor/") else REVALIDATE
        return response


def static_files() -> StaticFiles:
    if not assets_installed():
        logger.warning(
            "the pages' browser assets are missing or differ from api/pages/vendor.lock.json: /docs "
            "and GraphiQL answer 503 until the package is reinstalled (or `python api/pages/vendor.py`)"
        )
    return _StaticFiles(directory=STATIC_DIR, check_dir=False)
