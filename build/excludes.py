"""What the frozen doozer must not bundle, and a check that doozer needs none of it.

Two sources:
- every third-party package installed in the build environment that is not a
  runtime dependency of doozer (found from pyproject.toml and the installed
  packages' metadata): otherwise optional imports inside the dependencies pull
  in whatever happens to be installed (websockets' trio backend alone pulled
  trio, IPython and numpy: a 49 MB binary);
- standard-library modules that a running doozer never imports but that the
  import graph reaches (checked by building without them and running the
  frozen smoke tests).

`check_sources` fails the build when doozer's own code imports an excluded
module, so a later change that needs one of them breaks the build, not a
running node.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

# Standard-library modules a running doozer never imports.
STDLIB_UNUSED = (
    "tkinter",
    "_tkinter",
    "turtle",
    "turtledemo",
    "idlelib",
    "test",
    "unittest",
    "doctest",
    "pydoc",
    "pydoc_data",
    "pdb",
    "lib2to3",
    "distutils",
    "ensurepip",
    "venv",
    "xmlrpc",
    "xml",
    "pyexpat",
    "sqlite3",
    "_sqlite3",
    "curses",
    "_curses",
    "readline",
    "dbm",
    "tarfile",
    "lzma",
    "_lzma",
    "bz2",
    "_bz2",
)


def _dist_name(requirement: str) -> str | None:
    """The distribution a requirement string names, if it applies on every
    platform doozer is built on (an `extra ==` marker means optional)."""
    if "extra ==" in requirement or "extra==" in requirement:
        return None
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return m.group(1) if m else None


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(root: Path) -> set[str]:
    """Normalised names of doozer's runtime dependencies, transitively."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    todo = [n for r in project.get("dependencies", []) if (n := _dist_name(r))]
    seen: set[str] = set()
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # PyInstaller will report the missing import itself
        todo.extend(n for r in requires if (n := _dist_name(r)))
    return seen


def foreign_packages(root: Path) -> set[str]:
    """Top-level import names of installed distributions that doozer does not
    depend on (doozer itself excepted)."""
    keep = runtime_closure(root) | {"doozer"}
    foreign: set[str] = set()
    keep_modules: set[str] = set()
    for module, dists in metadata.packages_distributions().items():
        if any(_norm(d) in keep for d in dists):
            keep_modules.add(module)
        else:
            foreign.add(module)
    # A name shared with a kept distribution (a namespace package) stays, and
    # so does one that shadows the standard library (a backport).
    return {
        m for m in foreign - keep_modules if m.isidentifier() and m not in sys.stdlib_module_names
    }


def excludes(root: Path) -> list[str]:
    return sorted(set(STDLIB_UNUSED) | foreign_packages(root))


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def check_sources(package_dir: Path, excluded: list[str]) -> None:
    """Fail (SystemExit) if any module of the package imports an excluded one,
    anywhere in its body (function-local imports included)."""
    excluded_set = set(excluded)
    problems = []
    for path in sorted(package_dir.rglob("*.py")):
        for name in sorted(_imports(ast.parse(path.read_bytes(), str(path)))):
            parts = name.split(".")
            hit = next(
                (
                    ".".join(parts[:i])
                    for i in range(1, len(parts) + 1)
                    if ".".join(parts[:i]) in excluded_set
                ),
                None,
            )
            if hit:
                problems.append(f"  {path.relative_to(package_dir.parent)} imports {name}")
    if problems:
        raise SystemExit(
            "doozer.spec: doozer imports modules that the frozen build excludes\n"
            + "\n".join(problems)
            + "\nadd the package to pyproject.toml dependencies, or drop it from "
            "STDLIB_UNUSED in build/excludes.py"
        )
