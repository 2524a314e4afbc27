"""GET /docs: Swagger UI on /openapi.json, its files served by this service (no CDN: clusters
and these machines have no internet). The files come from the swagger-ui-bundle package
(Swagger UI 4.15) plus the project's own docs.html and docs-init.js in serve_app/static/."""

from __future__ import annotations

from importlib import resources

from starlette.responses import Response
from swagger_ui_bundle import swagger_ui_path

from serve_app.errors import ApiError

_STATIC = resources.files("serve_app").joinpath("static")
DOCS_PAGE = _STATIC.joinpath("docs.html").read_text()

# name -> (bytes, media type): exactly what the page loads, read once (1.2 MB in all).
_ASSETS: dict[str, tuple[bytes, str]] = {
    "swagger-ui.css": ((swagger_ui_path / "swagger-ui.css").read_bytes(), "text/css"),
    "swagger-ui-bundle.js": (
        (swagger_ui_path / "swagger-ui-bundle.js").read_bytes(),
        "text/javascript",
    ),
    "favicon-32x32.png": ((swagger_ui_path / "favicon-32x32.png").read_bytes(), "image/png"),
    "docs-init.js": (_STATIC.joinpath("docs-init.js").read_bytes(), "text/javascript"),
}

# Scripts and styles from this origin only (the files above: nothing else here serves any);
# Swagger UI draws its icons as data: SVGs and sends "Try it out" requests to this origin.
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def docs_asset(name: str) -> Response:
    """One of Swagger UI's files, cached by the browser for a day; 404 for any other name."""
    if name not in _ASSETS:
        raise ApiError(404, "not_found", f"no file {name!r} under /docs/static/")
    data, media_type = _ASSETS[name]
    return Response(data, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
