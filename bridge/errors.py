"""The exception tree of quietcast.bridge.

Every error carries the thing it is about (a stage, a parameter, a file) and
also inherits the matching builtin, so callers can catch either
``ChainSpecError`` or plain ``ValueError``. The CLI turns these into one
clear line and a non-zero exit; nothing here calls ``exit()``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``''``."""
    close = difflib.get_close_matches(str(word), list(choices), n=2, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


class BridgeError(Exception):
    """Base of every error raised by quietcast.bridge."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a chain: where (``stage 'nr'`` ...) and what."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ProblemsError(BridgeError, ValueError):
    """A file or spec with problems: holds every problem found, not just
    the first (``err.problems``), and names its ``source``. The message is
    ``SOURCE: N problems`` and one ``  - where: what`` line each.
    Subclasses set :attr:`default_source`."""

    default_source = "input"

    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = list(problems)
        self.source = source = source or self.default_source
        n = len(self.problems)
        head = f"{source}: {n} problem{'s' if n != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in self.problems))


class ChainSpecError(ProblemsError):
    """A chain file or spec is invalid."""

    default_source = "chain"


class ParameterError(BridgeError, ValueError):
    """A parameter value is of the wrong type or out of its range, or the
    parameter does not exist. The message names the parameter, the value
    and the allowed range or the close matches."""

    def __init__(self, address: str, message: str):
        self.address = address
        super().__init__(f"{address}: {message}" if address else message)


class UnknownParameterError(ParameterError):
    """The address or parameter does not exist (as opposed to a value that
    is out of range)."""


class PluginLoadError(BridgeError, OSError):
    """A hosted plugin could not be found or loaded."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"plugin {path!r}: {message}")


class AudioFileError(BridgeError, OSError):
    """An audio file could not be read (missing, corrupt, unsupported) or
    written."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


def read_utf8(path: str, what: str, error: type[ProblemsError]) -> str:
    """The text of a UTF-8 file, or ``error`` naming ``path`` with one clear
    problem (unreadable, or not UTF-8 with the byte and line)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise error([Problem("", f"cannot read {what}: {e.strerror or e}")], path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise error([Problem("", f"{what} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line})")], path) from None


def parse_toml(text: str, source: str, error: type[ProblemsError]) -> dict:
    """A TOML document, or ``error`` with the parser's message (line and
    column included)."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error([Problem("", f"not valid TOML: {e}")], source) from None
