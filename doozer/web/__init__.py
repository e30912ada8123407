"""The web viewer: every node serves a live view of its tree and its cluster.

`doozer serve -w HOST:PORT` (default 127.0.0.1:8000, `-w off` disables it).
Plain HTTP GETs get the page (`/`, `/app.js`, `/style.css`, from
`doozer/web/static/`, no CDN, no build step); `/ws` is the WebSocket.

Access checks on every HTTP request: a viewer bound to loopback answers only
to loopback host names (no DNS rebinding), and a WebSocket whose `Origin` is
not the viewer itself is refused (another site's page cannot read the tree).

WebSocket protocol
==================

Every message is one JSON object with an `op`, in a text frame. Requests that
may fail carry an `id` (any JSON value), echoed in the answer or error.

Files and events carry bodies as the client protocol does: `value` (UTF-8
text) or `value_b64` (anything else), with `len` (the full body length) and
`cut: true` when only the first 256 bytes are carried (ask `get` for all).

Server -> page
--------------
- `{"op":"hello","version","node","incarnation","auth":bool,"rev","oldest"}`
  first, on every connection. `auth: true`: the node has a secret; every
  request but `auth` is refused with PERMISSION until it is given.
  `incarnation` changes when the node restarts: a page must not catch up
  across incarnations.
- `{"op":"auth","ok":true}` / `{"op":"auth","ok":false,"detail"}`.
- `{"op":"status", id, addr, role, leader, rev, oldest, cal: {slot: node id
  or ""}, nodes: [{id, addr, role, applied, alive, self?}], rate: [events/s,
  oldest first, one per `rate_every` seconds, up to 60], rate_every}` once
  on auth and then every second (latest-wins: a slow page skips stale ones).
- A full load: `{"op":"load","rev":R,"oldest","count"}` (the page drops its
  tree), `{"op":"files","files":[{path,rev,len,value|value_b64,cut?}, ...]}`
  (sorted by path, up to 500 per message), `{"op":"loaded","rev":R,
  "recent":[the last events up to R, at most 50, for the feed]}`.
  A load may restart (a new `load`) if R leaves the history while it is sent.
- A catch-up: `{"op":"catchup","from":F,"rev":R}` then the events F..R.
- `{"op":"evs","events":[{rev,path,flags,len?,value|value_b64?,cut?}, ...]}`
  in rev order, gapless after a load at R or a catch-up from F; `flags` 4
  set, 8 del (no value).
- `{"op":"at","id","rev","files":[...],"done":bool}`: the tree at a past rev,
  in chunks; the last has `done: true`.
- `{"op":"value","id","path","rev","len","value"|"value_b64"}`: a full body.
- `{"op":"error","id"?,"code","detail"}`: codes as in the client protocol
  (BAD_REQUEST, UNKNOWN_VERB, PERMISSION, TOO_LATE, RANGE, BAD_PATH, ISDIR...).

Page -> server
--------------
- `{"op":"auth","secret":S}` (compared in constant time).
- `{"op":"sub"}`: a full load, then live events. `{"op":"sub","from":F}`:
  the events from rev F on (F = the last rev the page saw + 1), then live;
  if the history no longer holds F (TOO_LATE) or F is ahead of the node, a
  full load instead. A new `sub` supersedes the previous one.
- `{"op":"at","id","rev":R}`: the tree at rev R, oldest <= R <= rev (TOO_LATE
  below, RANGE above). A newer `at` supersedes one still being sent.
- `{"op":"get","id","path","rev"?}`: one file's whole body (at a rev).

Output per socket is bounded (8 MiB queued): a page that stops reading is
closed with 1013 and catches up when it reconnects.
"""

from __future__ import annotations

from doozer.web.viewer import WebViewer, start

__all__ = ["WebViewer", "start"]
