"""`/ui`: the console, static files served by the service itself (no CDN: it works offline).

It is a client of the same HTTP API; its pages are public (they hold no data), its calls
carry the token the user types (a bearer header, never a cookie). The Content-Security-Policy
allows only this origin's own scripts, styles and API: no inline script, no inline style,
no framing, so a stored `<script>` text can neither run nor be smuggled in as markup (the
scripts also render every text as a text node).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from service.errors import NotFound

router = APIRouter()
FOLDER = Path(__file__).resolve().parent.parent / "console"
TYPES = {
    "console.js": "text/javascript; charset=utf-8",
    "views.js": "text/javascript; charset=utf-8",
    "label.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@router.get("/ui", include_in_schema=False)
def console_page() -> Response:
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/ui/{name}", include_in_schema=False)
def console_file(name: str) -> Response:
    kind = TYPES.get(name)
    if kind is None:
        raise NotFound(f"no console file {name!r}", fix="open /ui")
    return _file(name, kind)


def _file(name: str, kind: str) -> Response:
    return Response(
        (FOLDER / name).read_bytes(),
        media_type=kind.split(";")[0],
        headers={**HEADERS, "Content-Type": kind},
    )
