"""Parameter descriptions shared by chain stages, the chain file parser and
(later) the daemon's parameter registry.

A :class:`Param` knows its name, kind, default, range and unit, and checks a
value the same way wherever it comes from, with a message that names the
parameter, the value and the allowed range (pedalboard's style:
"Value received for parameter 'x' (v) is out of range [a, b]").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ParameterError, UnknownParameterError, did_you_mean

KINDS = ("float", "int", "bool", "str", "choice", "dict")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str = "float"
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    unit: str = ""
    choices: tuple = ()
    doc: str = ""
    allow_neg_inf: bool = False  # e.g. a level in dB where -inf means "off"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Param kind must be one of {KINDS}, got {self.kind!r}")

    def range_text(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind in ("str", "dict"):
            return self.kind
        lo = "-inf" if self.lo is None else _fmt(self.lo)
        hi = "inf" if self.hi is None else _fmt(self.hi)
        r = f"[{lo}, {hi}]"
        if self.allow_neg_inf and self.lo is not None:
            r += " or -inf"
        return r + (f" {self.unit}" if self.unit else "")

    def check(self, value: Any, where: str = "") -> Any:
        """Return ``value`` converted to this parameter's kind, or raise
        :class:`ParameterError` naming ``where.name``, the value and range."""
        addr = f"{where}.{self.name}" if where else self.name
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            raise ParameterError(addr, f"value {value!r} is not a boolean (true or false)")
        if self.kind == "str":
            if not isinstance(value, str):
                raise ParameterError(addr, f"value {value!r} is not a string")
            return value
        if self.kind == "dict":
            if not isinstance(value, dict):
                raise ParameterError(addr, f"value {value!r} is not a table")
            return value
        if self.kind == "choice":
            if value not in self.choices:
                raise ParameterError(
                    addr,
                    f"value {value!r} is not {self.range_text()}{did_you_mean(str(value), map(str, self.choices))}",
                )
            return value
        # numeric
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ParameterError(addr, f"value {value!r} is not a number; allowed range {self.range_text()}") from None
            else:
                raise ParameterError(addr, f"value {value!r} is not a number; allowed range {self.range_text()}")
        try:
            v = float(value)
        except OverflowError:  # an integer beyond any float (JSON allows 400 digits): not a bug, a refusal
            raise ParameterError(addr, f"value {'-' if value < 0 else ''}{str(abs(value))[:12]}... "
                                       f"({len(str(abs(value)))} digits) is out of range {self.range_text()}") from None
        if math.isnan(v):
            raise ParameterError(addr, f"value NaN is not allowed; allowed range {self.range_text()}")
        if self.allow_neg_inf and v == -math.inf:
            return v
        if math.isinf(v) or (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
            raise ParameterError(addr, f"value {_fmt(v)} is out of range {self.range_text()}")
        if self.kind == "int":
            if v != int(v):
                raise ParameterError(addr, f"value {_fmt(v)} is not an integer; allowed range {self.range_text()}")
            return int(v)
        return v

    def describe(self) -> dict:
        d = {"name": self.name, "type": self.kind, "default": self.default, "unit": self.unit}
        if self.kind in ("float", "int"):
            d["min"], d["max"] = self.lo, self.hi
        if self.kind == "choice":
            d["choices"] = list(self.choices)
        if self.doc:
            d["doc"] = self.doc
        return d


def _fmt(v: float) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:g}"


@dataclass
class ParamSet:
    """An ordered set of :class:`Param` with lookup that suggests close names."""

    params: dict[str, Param] = field(default_factory=dict)

    @classmethod
    def of(cls, *params: Param) -> "ParamSet":
        return cls({p.name: p for p in params})

    def __contains__(self, name: str) -> bool:
        return name in self.params

    def __iter__(self):
        return iter(self.params.values())

    def get(self, name: str, where: str = "") -> Param:
        try:
            return self.params[name]
        except KeyError:
            addr = f"{where}.{name}" if where else name
            known = ", ".join(self.params) or "none"
            raise UnknownParameterError(
                addr, f"unknown parameter{did_you_mean(name, self.params)}; known parameters: {known}"
            ) from None
