"""The viewer's static page and the checks made on every HTTP request.

Assets are read once at start from `doozer/web/static/` (inside the frozen
binary too: PyInstaller unpacks them next to this module) and served from
memory.
"""

from __future__ import annotations

import email.utils
import ipaddress
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# The page loads nothing from elsewhere; keep it that way in the browser too.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Assets:
    """URL path -> (body, content type), read once."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        if root.is_dir():
            for f in sorted(root.rglob("*")):
                ctype = CONTENT_TYPES.get(f.suffix)
                if f.is_file() and ctype is not None:
                    self.files["/" + f.relative_to(root).as_posix()] = (f.read_bytes(), ctype)
        if "/index.html" in self.files:
            self.files["/"] = self.files["/index.html"]

    def get(self, url_path: str) -> tuple[bytes, str] | None:
        return self.files.get(url_path.split("?", 1)[0])


def response(status: int, reason: str, body: bytes, ctype: str) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", ctype),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Content-Security-Policy", CSP),
        ]
    )
    return Response(status, reason, headers, body)


def text_response(status: int, reason: str, text: str) -> Response:
    return response(status, reason, text.encode(), "text/plain; charset=utf-8")


def is_loopback_host(host: str) -> bool:
    """True for a host name that can only mean this machine."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(hostport: str) -> str:
    """The host of a `Host` header value (`h`, `h:port`, `[v6]:port`)."""
    if hostport.startswith("["):
        return hostport[1 : hostport.find("]")] if "]" in hostport else hostport
    return hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport


def request_refusal(host: str | None, origin: str | None, loopback_only: bool) -> str | None:
    """Why a request must be refused, or None.

    A viewer bound to loopback answers only to loopback host names, so a web
    page cannot reach it through DNS rebinding; a WebSocket opened by a page
    must come from the viewer's own origin, so another site cannot read the tree.
    """
    if host is None:
        return "no Host header"
    if loopback_only and not is_loopback_host(split_host(host)):
        return f"Host {host!r} is not a loopback name"
    if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
        return f"Origin {origin!r} is not this viewer"
    return None
