"""doozer: a consistent, highly-available coordination store."""

from doozer.version import __version__

__all__ = ["__version__"]
