"""Subscriptions to store events: WAIT (one-shot), WATCH (stream), the web viewer.

Pure bookkeeping: events in, callbacks out. Subscriptions with the same glob
share one compiled matcher and one match per event, so a fan-out of many
watchers on one glob costs one regex match per event.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from doozer.paths import compile_glob
from doozer.protocol import encode_value
from doozer.store import Event

Deliver = Callable[[Event, bytes], None]


def event_body(ev: Event) -> bytes:
    """The response line of an event, without tag: `{"path":..,"rev":..,"value":..,"flags":..}`."""
    resp: dict = {"path": ev.path, "rev": ev.rev}
    encode_value(resp, ev.value if ev.value is not None else b"")
    resp["flags"] = ev.flags
    return orjson.dumps(resp)


class Subscription:
    __slots__ = ("active", "deliver", "glob", "lost", "min_rev", "once", "registry")

    def __init__(
        self,
        registry: WatchRegistry,
        glob: str,
        min_rev: int,
        deliver: Deliver,
        once: bool,
        lost: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.glob = glob
        self.min_rev = min_rev
        self.deliver = deliver
        self.once = once
        self.lost = lost  # told when events it should have had can no longer be given
        self.active = True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self.registry._remove(self)


class WatchRegistry:
    def __init__(self) -> None:
        self._by_glob: dict[str, list[Subscription]] = {}
        self._matchers: dict[str, Callable[[str], bool]] = {}
        self.count = 0

    def subscribe(
        self,
        glob: str,
        min_rev: int,
        deliver: Deliver,
        once: bool,
        lost: Callable[[], None] | None = None,
    ) -> Subscription:
        """Deliver every future event with rev >= min_rev whose path matches."""
        sub = Subscription(self, glob, min_rev, deliver, once, lost)
        subs = self._by_glob.get(glob)
        if subs is None:
            self._matchers[glob] = compile_glob(glob)
            subs = self._by_glob[glob] = []
        subs.append(sub)
        self.count += 1
        return sub

    def _remove(self, sub: Subscription) -> None:
        subs = self._by_glob.get(sub.glob)
        if subs is None:
            return
        try:
            subs.remove(sub)
        except ValueError:
            return
        self.count -= 1
        if not subs:
            del self._by_glob[sub.glob]
            del self._matchers[sub.glob]

    def publish(self, ev: Event) -> None:
        if not self._by_glob:
            return
        body: bytes | None = None
        for glob, subs in list(self._by_glob.items()):
            if not self._matchers[glob](ev.path):
                continue
            if body is None:
                body = event_body(ev)
            for sub in list(subs):
                if not sub.active or ev.rev < sub.min_rev:
                    continue
                if sub.once:
                    sub.cancel()
                sub.deliver(ev, body)

    def lose_all(self) -> None:
        """The stream has a gap (a snapshot replaced the store past revs not
        yet published): end every subscription and tell it."""
        for sub in self.close_all():
            if sub.lost is not None:
                sub.lost()

    def close_all(self) -> list[Subscription]:
        subs = [s for lst in self._by_glob.values() for s in lst]
        for s in subs:
            s.cancel()
        return subs
