"""Where a client finds the cluster: `host:port` lists and Doozer URIs.

A Doozer URI names the cluster's addresses and, optionally, its secret:
`doozer:?ca=10.0.0.1:8046&ca=10.0.0.2:8046&sk=SECRET`. As in the original,
the query is form-encoded (`+` and `%2B` decode to a space and a plus).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterable, Mapping

DEFAULT_ADDR = "127.0.0.1:8046"
SCHEME = "doozer:"


class BadURI(ValueError):
    """An address or Doozer URI that cannot be parsed."""


def split_host_port(addr: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port). An empty host means 127.0.0.1."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not port_text.isdigit():
        raise BadURI(f"bad address {addr!r}: want host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise BadURI(f"bad address {addr!r}: port out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise BadURI(f"bad address {addr!r}: put an IPv6 host in brackets")
    return host or "127.0.0.1", port


def split_addrs(text: str) -> list[str]:
    """A comma-separated address list, each checked."""
    addrs = [a.strip() for a in text.split(",") if a.strip()]
    if not addrs:
        raise BadURI(f"no address in {text!r}")
    for a in addrs:
        split_host_port(a)
    return addrs


def parse_uri(uri: str) -> tuple[list[str], str | None]:
    """`doozer:?ca=ADDR&ca=ADDR&sk=SECRET` -> (addrs, secret or None).

    A `ca` may itself hold a comma-separated list. `cn` (a cluster name to
    look up in DzNS) is not supported; it is ignored when `ca` is present.
    """
    if not uri.startswith(SCHEME):
        raise BadURI(f"not a doozer URI: {uri!r}")
    query = uri[len(SCHEME) :].removeprefix("?")
    try:
        params = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as e:
        raise BadURI(f"bad doozer URI {uri!r}: {e}") from None
    addrs: list[str] = []
    for ca in params.get("ca", []):
        addrs.extend(split_addrs(ca))
    if not addrs:
        raise BadURI(f"doozer URI without ca=ADDR: {uri!r}")
    sk = params.get("sk")
    return addrs, (sk[-1] if sk else None)


def parse(spec: str) -> tuple[list[str], str | None]:
    """A Doozer URI or a comma-separated address list -> (addrs, secret or None)."""
    spec = spec.strip()
    if spec.startswith(SCHEME):
        return parse_uri(spec)
    return split_addrs(spec), None


def resolve(
    specs: Iterable[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[list[str], str | None]:
    """The addresses and secret a command should use.

    `specs` are the `-a` values (addresses or URIs, in order; their addresses
    are concatenated, the last `sk` wins). Without any, `$DOOZER_URI`, else
    127.0.0.1:8046. Without an `sk`, the secret is `$DOOZER_SECRET` if set
    (the variable a node reads its own secret from).
    """
    env = os.environ if env is None else env
    specs = [s for s in (specs or []) if s.strip()]
    if not specs and env.get("DOOZER_URI", "").strip():
        specs = [env["DOOZER_URI"]]
    addrs: list[str] = []
    secret: str | None = None
    for spec in specs:
        more, sk = parse(spec)
        addrs.extend(a for a in more if a not in addrs)
        if sk is not None:
            secret = sk
    if not addrs:
        addrs = [DEFAULT_ADDR]
    if secret is None:
        secret = env.get("DOOZER_SECRET") or None
    return addrs, secret
