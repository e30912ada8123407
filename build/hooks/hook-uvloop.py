"""uvloop's compiled loop imports `uvloop._noop` (and others) from C, where
PyInstaller's import scan cannot see them: collect every submodule that the
installed uvloop has, minus its test helper (it drags in unittest)."""

from PyInstaller.utils.hooks import collect_submodules

hiddenimports = collect_submodules("uvloop", filter=lambda name: name != "uvloop._testbase")
