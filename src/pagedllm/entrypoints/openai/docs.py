"""/docs (Swagger UI) and /redoc with their JS and CSS served from the installed package.

FastAPI's own pages load them from a CDN, so they stay blank on a machine without internet;
fastapi-offline ships the same bundles (Swagger UI 5, ReDoc 2).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
DOCS_PATHS = frozenset({"/docs", "/redoc"})
_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"


def install_offline_docs(app: FastAPI) -> None:
    """Add /docs, /redoc and their assets (none in the OpenAPI schema).

    The app must be built with `docs_url=None, redoc_url=None`: FastAPI's CDN pages would
    otherwise answer those paths first.
    """
    if not _ASSETS_DIR.is_dir():
        raise RuntimeError(
            f"fastapi-offline's assets are missing from {_ASSETS_DIR}; reinstall fastapi-offline"
        )
    app.mount(ASSETS_PATH, StaticFiles(directory=_ASSETS_DIR), name="docs-assets")

    def urls(request: Request) -> tuple[str, str]:
        # root_path: behind a proxy that serves the app under a prefix, links must carry it.
        root = request.scope.get("root_path", "").rstrip("/")
        return root + app.openapi_url, root + ASSETS_PATH

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        openapi_url, assets = urls(request)
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        openapi_url, assets = urls(request)
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )
