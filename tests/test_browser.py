"""The web viewer in a real headless Chromium, against a real node process.

Needs Debian's `chromium` (apt-get install chromium) and Playwright for Python
(pip install playwright; its own browser download is not used). Skipped,
with the reason, when either is missing. Screenshots go to artifacts/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.nodeproc import ROOT, NodeProc, Raw, free_port, wait_port

CHROMIUM = os.environ.get("DOOZER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (apt-get install chromium, or set DOOZER_CHROMIUM)",
        allow_module_level=True,
    )
try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:
    pytest.skip(
        "Playwright for Python is not installed (pip install playwright)", allow_module_level=True
    )

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEADLINE_MS = 10_000
ARTIFACTS = ROOT / "artifacts"

expect.set_options(timeout=DEADLINE_MS)


class Stack:
    """One node process with its web viewer and the test hooks on."""

    def __init__(self) -> None:
        self.web_port = free_port()
        self.node = NodeProc("-w", f"127.0.0.1:{self.web_port}", env={"DOOZER_WEB_DEBUG": "1"})
        self.url = f"http://127.0.0.1:{self.web_port}/"

    def start(self) -> Stack:
        self.node.start()
        wait_port("127.0.0.1", self.web_port, proc=self.node.proc)
        return self

    def call(self, req: dict) -> dict:
        with Raw(self.node.addr) as r:
            resp = r.call(req)
        assert "err_code" not in resp, resp
        return resp

    def set(self, path: str, value: str) -> int:
        return self.call({"verb": "SET", "path": path, "value": value})["rev"]

    def delete(self, path: str) -> int:
        return self.call({"verb": "DEL", "path": path})["rev"]

    def hook(self, path: str) -> str:
        with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=5) as resp:
            return resp.read().decode()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    s = Stack()
    try:
        yield s.start()
    finally:
        rc = s.node.stop()
        assert rc == 0, f"node exited {rc}:\n{s.node.log()}"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    p = ctx.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield p
        assert errors == [], f"the page logged errors: {errors}"
    finally:
        ctx.close()


def open_viewer(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def show_only(page: Page, glob: str) -> None:
    page.fill("#filter", glob)
    # the filter applies after a short pause in typing
    page.wait_for_function(
        "g => window.doozerViewer.filter !== null && document.querySelector('#filter').value === g",
        arg=glob,
        timeout=DEADLINE_MS,
    )


def row(page: Page, path: str) -> Any:
    return page.locator(f'#tree-rows .row.file[data-path="{path}"]')


# -- live rows ---------------------------------------------------------------


def test_set_change_and_delete_show_live(stack: Stack, page: Page) -> None:
    open_viewer(page, stack.url)
    show_only(page, "/web/live/*")
    expect(page.locator("#tree-empty")).to_have_text("no file matches the filter")

    r1 = stack.set("/web/live/a", "hello")
    expect(row(page, "/web/live/a").locator(".val")).to_have_text("hello")
    expect(row(page, "/web/live/a").locator(".rev")).to_have_text(str(r1))

    r2 = stack.set("/web/live/a", "world")
    expect(row(page, "/web/live/a").locator(".val")).to_have_text("world")
    expect(row(page, "/web/live/a").locator(".rev")).to_have_text(str(r2))
    expect(page.locator("#rev")).to_have_text(str(r2))

    stack.delete("/web/live/a")
    expect(row(page, "/web/live/a")).to_have_count(0)
    expect(page.locator("#feed li").first).to_contain_text("DEL")


def test_new_rows_take_their_sorted_place_in_the_tree(stack: Stack, page: Page) -> None:
    for name in ("b", "d"):
        stack.set(f"/web/sorted/{name}", name)
    open_viewer(page, stack.url)
    page.click('#tree-rows .row.dir[data-path="/web"]')
    page.click('#tree-rows .row.dir[data-path="/web/sorted"]')
    names = page.locator('#tree-rows .row.file[data-path^="/web/sorted/"]')
    expect(names).to_have_count(2)
    for name in ("c", "a", "e"):
        stack.set(f"/web/sorted/{name}", name)
    expect(names).to_have_count(5)

    def in_order() -> list[str]:
        # rows are absolutely placed: their order is their offset, not the DOM's
        return page.eval_on_selector_all(
            '#tree-rows .row.file[data-path^="/web/sorted/"]',
            "els => els.map(e => [new DOMMatrix(getComputedStyle(e).transform).m42,"
            " e.dataset.path]).sort((a, b) => a[0] - b[0]).map(x => x[1])",
        )

    assert in_order() == [f"/web/sorted/{n}" for n in "abcde"]


# -- history -----------------------------------------------------------------


def test_history_slider_shows_the_tree_at_an_older_rev(stack: Stack, page: Page) -> None:
    r_old = stack.set("/web/hist/f", "old value")
    r_new = stack.set("/web/hist/f", "new value")
    open_viewer(page, stack.url)
    show_only(page, "/web/hist/*")
    val = row(page, "/web/hist/f").locator(".val")
    expect(val).to_have_text("new value")
    slider = page.locator("#slider")
    expect(slider).to_have_attribute("max", str(r_new))

    # drag the thumb all the way back: the oldest rev held, before the file existed
    box = slider.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] - 4, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, y, steps=5)
    page.mouse.move(box["x"] + 1, y, steps=5)
    page.mouse.up()
    oldest = slider.get_attribute("min")
    expect(page.locator("#slider-label")).to_have_text(f"rev {oldest} of {r_new}")
    expect(row(page, "/web/hist/f")).to_have_count(0)

    # then step to the rev of the first write, and back to live
    slider.focus()
    page.keyboard.press("End")
    expect(page.locator("#slider-label")).to_contain_text("live")
    for _ in range(r_new - r_old):
        page.keyboard.press("ArrowLeft")
    expect(page.locator("#slider-label")).to_have_text(f"rev {r_old} of {r_new}")
    expect(val).to_have_text("old value")
    expect(page.locator("body")).to_have_class("hist")
    page.click("#live-btn")
    expect(val).to_have_text("new value")
    expect(page.locator("#slider-label")).to_contain_text("live")


# -- connection loss -------------------------------------------------------------


def test_reconnect_catches_up_without_missing_a_change(stack: Stack, page: Page) -> None:
    stack.set("/web/rc/a", "before")
    open_viewer(page, stack.url)
    show_only(page, "/web/rc/*")
    expect(row(page, "/web/rc/a").locator(".val")).to_have_text("before")

    # the node drops the page's socket and refuses it until released
    assert stack.hook("/debug/drop?hold=1") == "dropped 1\n"
    expect(page.locator("#conn")).to_have_attribute("data-state", "down")
    expect(page.locator("#banner")).to_contain_text("Disconnected")
    try:
        stack.set("/web/rc/a", "changed while away")
        stack.set("/web/rc/b", "new while away")
        stack.delete("/web/rc/a")
        last = stack.set("/web/rc/c", "last")
        expect(page.locator("#conn")).to_have_attribute("data-state", "down")
        assert row(page, "/web/rc/b").count() == 0
    finally:
        stack.hook("/debug/release")

    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(row(page, "/web/rc/b").locator(".val")).to_have_text("new while away")
    expect(row(page, "/web/rc/c").locator(".val")).to_have_text("last")
    expect(row(page, "/web/rc/a")).to_have_count(0)
    expect(page.locator("#rev")).to_have_text(str(last))
    stats = page.evaluate("window.doozerViewer.stats")
    assert stats["catchups"] >= 1 and stats["loads"] == 1 and stats["gaps"] == 0, stats
    assert stats["connects"] >= 2, stats


# -- what operators see -----------------------------------------------------------


def populate(stack: Stack, n: int) -> None:
    """A few hundred files shaped like a real deployment's."""
    import orjson

    services = ["api", "billing", "search", "auth", "queue", "mailer"]
    with Raw(stack.node.addr) as r:
        reqs = []
        for i in range(n):
            svc = services[i % len(services)]
            kind = i % 5
            if kind == 0:
                path = f"/svc/{svc}/instances/i-{i:04d}"
                body = orjson.dumps({"host": f"10.0.{i % 8}.{i % 250}", "port": 8000 + i % 50})
                reqs.append({"verb": "SET", "path": path, "value": body.decode()})
            elif kind == 1:
                path = f"/svc/{svc}/config/limit-{i}"
                reqs.append({"verb": "SET", "path": path, "value": f"rate={i % 90}/s\nburst=20"})
            elif kind == 2:
                path = f"/locks/{svc}/shard-{i:03d}"
                reqs.append({"verb": "SET", "path": path, "value": f"owner=node-{i % 3}"})
            elif kind == 3:
                state = ("queued", "running", "done", "failed")[i % 4]
                reqs.append({"verb": "SET", "path": f"/jobs/{i:05d}/state", "value": state})
            else:
                blob = bytes((i * 37 + k * 11) % 256 for k in range(48))
                import base64

                reqs.append(
                    {
                        "verb": "SET",
                        "path": f"/blobs/{svc}/obj-{i}",
                        "value_b64": base64.b64encode(blob).decode(),
                    }
                )
        for k, req in enumerate(reqs):
            r.send({"tag": k, **req})
        for _ in reqs:
            assert "err_code" not in r.recv()


def test_screenshot_with_a_few_hundred_files(stack: Stack, page: Page) -> None:
    populate(stack, 360)
    open_viewer(page, stack.url)
    for d in ("/svc", "/svc/api", "/svc/api/config", "/svc/api/instances", "/blobs"):
        page.click(f'#tree-rows .row.dir[data-path="{d}"]')
    page.click('#tree-rows .row.dir[data-path="/blobs/api"]')
    first_blob = page.locator('#tree-rows .row.file[data-path^="/blobs/api/"]').first
    expect(first_blob.locator(".val")).to_contain_text("bin ")
    first_conf = page.locator('#tree-rows .row.file[data-path^="/svc/api/config/"]').first
    first_conf.click()
    expect(page.locator("#insp-body")).to_contain_text("burst=20")
    expect(page.locator("#nodes tbody tr")).to_have_count(1)
    expect(page.locator("#nodes tbody tr .role")).to_have_text("leader")
    # a little live traffic for the chart and the feed
    for i in range(12):
        stack.set(
            f"/svc/api/config/limit-{i * 5 + 1}" if i % 2 else f"/jobs/{i:05d}/state", f"v{i}"
        )
    expect(page.locator("#feed li")).not_to_have_count(0)
    page.wait_for_function(
        "() => (window.doozerViewer.status || {rate: []}).rate.length >= 2", timeout=DEADLINE_MS
    )
    assert int(page.locator("#nfiles").inner_text()) >= 360
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-viewer.png"))


class InProcessViewer:
    """A node and viewer on a loop in a thread, for states a one-node process
    cannot show yet (a cluster's status)."""

    def __init__(self, status_patch: Any) -> None:
        self.status_patch = status_patch
        self.ready = threading.Event()
        self.addr = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_evt: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from doozer.runtime import run_loop

        run_loop(self._main())

    async def _main(self) -> None:
        import doozer.web
        from doozer.node import Node
        from doozer.sequencer import LocalSequencer
        from doozer.serve import write_initial_ctl
        from doozer.store import Store

        node = Node(node_id="aaaa1111bbbb2222", store=Store(), sequencer=LocalSequencer())
        node.addr = "10.0.0.1:8046"
        node.start()
        await write_initial_ctl(node, "prod-east", 3)
        real = node.status
        node.status = lambda: self.status_patch(real())  # type: ignore[method-assign]
        web = await doozer.web.start("127.0.0.1:0", node, None, explicit=True)
        assert web is not None
        self.addr = web.addr
        self.loop = asyncio.get_running_loop()
        self.stop_evt = asyncio.Event()
        self.ready.set()
        await self.stop_evt.wait()
        await web.close()
        node.close()

    def __enter__(self) -> InProcessViewer:
        self.thread.start()
        assert self.ready.wait(10), "the in-process viewer did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.stop_evt is not None
        self.loop.call_soon_threadsafe(self.stop_evt.set)
        self.thread.join(10)


def fake_node(nid: str, addr: str, role: str, applied: int | None, alive: bool | None) -> dict:
    return {"id": nid, "addr": addr, "role": role, "applied": applied, "alive": alive}


def three_nodes(st: dict) -> dict:
    st["cal"] = {"0": "aaaa1111bbbb2222", "1": "cccc3333dddd4444", "2": "eeee5555ffff6666"}
    rev = st["rev"]
    st["nodes"] = [
        fake_node("aaaa1111bbbb2222", "10.0.0.1:8046", "leader", rev, True) | {"self": True},
        fake_node("cccc3333dddd4444", "10.0.0.2:8046", "member", rev - 1, True),
        fake_node("eeee5555ffff6666", "10.0.0.3:8046", "member", rev - 5, False),
        fake_node("9999aaaa0000bbbb", "10.0.0.4:8046", "follower", None, None),
    ]
    st["leader"] = "aaaa1111bbbb2222"
    return st


def test_cluster_view_renders_every_node(page: Page) -> None:
    with InProcessViewer(three_nodes) as v:
        open_viewer(page, f"http://{v.addr}/")
        rows = page.locator("#nodes tbody tr")
        expect(rows).to_have_count(4)
        expect(rows.nth(0).locator(".role")).to_have_text("leader")
        expect(rows.nth(0).locator(".you")).to_have_count(1)
        alive = '#nodes tr[data-node="{}"] td.alive'
        expect(page.locator(alive.format("eeee5555ffff6666"))).to_have_attribute(
            "data-alive", "down"
        )
        expect(page.locator(alive.format("9999aaaa0000bbbb"))).to_have_attribute(
            "data-alive", "unknown"
        )
        expect(page.locator(alive.format("aaaa1111bbbb2222"))).to_have_attribute("data-alive", "up")
        expect(page.locator("#cal .chip")).to_have_count(3)
        expect(page.locator("#cluster-name")).to_have_text("cluster prod-east")
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("aside").screenshot(path=str(ARTIFACTS / "web-viewer-cluster-fake.png"))


def test_a_secret_is_asked_for_before_anything_shows(page: Page) -> None:
    port = free_port()
    secret = "open sesame"
    node = NodeProc("-w", f"127.0.0.1:{port}", env={"DOOZER_SECRET": secret})
    try:
        node.start()
        wait_port("127.0.0.1", port, proc=node.proc)
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.locator("#auth")).to_be_visible()
        expect(page.locator("#conn")).to_have_attribute("data-state", "locked")
        assert page.locator("#tree-rows .row").count() == 0
        page.fill("#auth-secret", "wrong")
        page.press("#auth-secret", "Enter")
        expect(page.locator("#auth-error")).to_be_visible()
        page.fill("#auth-secret", secret)
        page.press("#auth-secret", "Enter")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        expect(page.locator("#auth")).to_be_hidden()
        expect(page.locator('#tree-rows .row.dir[data-path="/ctl"]')).to_have_count(1)
    finally:
        node.stop()


def test_screenshot_of_a_three_node_cluster(page: Page) -> None:
    """A few hundred files on a real three-member cluster, for the record."""
    from tests.nodeproc import call, wait_three_members

    web_port = free_port()
    first = NodeProc("-w", f"127.0.0.1:{web_port}", "--election-timeout", "0.5")
    others: list[NodeProc] = []
    try:
        first.start()
        wait_port("127.0.0.1", web_port, proc=first.proc)
        for _ in range(2):
            n = NodeProc("-a", first.addr, "--election-timeout", "0.5")
            n.start()
            others.append(n)
        nodes = [first, *others]
        wait_three_members(nodes)
        holder = Stack.__new__(Stack)
        holder.node = first
        populate(holder, 300)
        open_viewer(page, f"http://127.0.0.1:{web_port}/")
        expect(page.locator("#nodes tbody tr")).to_have_count(3)
        expect(page.locator("#nodes tbody tr .role", has_text="leader")).to_have_count(1)
        for d in ("/svc", "/svc/api", "/svc/api/config"):
            page.click(f'#tree-rows .row.dir[data-path="{d}"]')
        for i in range(12):
            call(others[i % 2].addr, {"verb": "SET", "path": f"/jobs/{i:05d}/state", "value": "ok"})
        page.wait_for_function(
            "() => (window.doozerViewer.status || {rate: []}).rate.length >= 2",
            timeout=DEADLINE_MS,
        )
        if call(first.addr, {"verb": "SELF"})["role"] == "leader":
            # the leader hears every member's progress: each row shows its rev
            page.wait_for_function(
                "() => { const n = (window.doozerViewer.status || {nodes: []}).nodes;"
                " return n.length == 3 && n.every(x => Number.isInteger(x.applied)); }",
                timeout=DEADLINE_MS,
            )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-viewer-cluster.png"))
    finally:
        for n in [first, *others]:
            n.stop(5)
