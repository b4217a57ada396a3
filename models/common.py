"""What every part of quietcast uses, kept where each part can import it:
``quietcast.bridge`` and ``quietcast.daemon`` import ``quietcast.models``,
which imports neither. Standard library only.

- :func:`quietcast_version`: the installed package's version (``quietcast
  --version``, the ``version`` command, the CodingHistory line of an
  offline output).
"""

from __future__ import annotations

import functools

__all__ = ["quietcast_version"]


@functools.cache
def quietcast_version() -> str:
    """The installed quietcast's version ("unknown" where it is not
    installed, or its metadata cannot be read); looked up once."""
    try:
        from importlib.metadata import version

        return version("quietcast")
    except Exception:
        return "unknown"
