from __future__ import annotations

import pytest

from doozer import storage
from tests.faultyfs import FaultyOS
from tests.nodeproc import NodeProc


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run long soak tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak run: use --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def node():
    """One single-member node process, shared by a module's tests."""
    n = NodeProc().start()
    try:
        yield n
    finally:
        rc = n.stop()
        assert rc == 0, f"node exited {rc}:\n{n.log()}"


@pytest.fixture
def fos(monkeypatch: pytest.MonkeyPatch) -> FaultyOS:
    """doozer.storage's `os`, with faults to inject (tests/faultyfs.py)."""
    f = FaultyOS()
    monkeypatch.setattr(storage, "os", f)
    return f
