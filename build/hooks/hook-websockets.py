"""websockets imports most of its public names lazily (websockets/__init__.py),
so PyInstaller's scan cannot see them: collect its submodules, except the
trio backend (trio is not a doozer dependency; collecting it pulled in trio,
IPython and numpy) and websockets' own command-line client."""

from PyInstaller.utils.hooks import collect_submodules


def _wanted(name: str) -> bool:
    return not (
        name == "websockets.trio"
        or name.startswith("websockets.trio.")
        or name in ("websockets.__main__", "websockets.cli")
    )


hiddenimports = collect_submodules("websockets", filter=_wanted)
