"""The pages the ingress serves: ``GET /``, the web page to try the model (static/index.html, under
a CSP that allows exactly its own inline script and style), and ``GET /docs``, Swagger UI on
/openapi.json, its files served by this service (no CDN: clusters and these machines have no
internet). Swagger UI's files come from the swagger-ui-bundle package (Swagger UI 4.15), plus
the project's own docs.html and docs-init.js in serve_app/static/."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

from starlette.responses import Response
from swagger_ui_bundle import swagger_ui_path

from serve_app.common.errors import ApiError

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


PAGE = resources.files("serve_app").joinpath("static/index.html").read_text()


def inline_hashes(html: str, tag: str) -> str:
    """CSP source list allowing exactly the page's own inline <script> or <style> blocks."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
    return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"


# The page runs its own inline script and style and nothing else: an artifact's name or an
# answer that reaches the page as markup cannot run (and the page writes text nodes anyway).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {inline_hashes(PAGE, 'script')}; "
        f"style-src {inline_hashes(PAGE, 'style')}; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
API_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
