"""The control protocol, version 1: one command per module, whose
docstring is its specification (circus style). The README's protocol
section is generated from these docstrings (:func:`protocol_markdown`) and
a test keeps the two equal.

Wire format: the daemon serves a ZeroMQ ROUTER socket. A request is ONE
frame of UTF-8 JSON (REQ and DEALER clients both work)::

    {"v": 1, "id": "42", "cmd": "set", "args": {"address": "host.strength", "value": 0.5}}

Every request gets exactly one reply with the same ``id``::

    {"v": 1, "id": "42", "ok": true, "result": 0.5}
    {"v": 1, "id": "42", "ok": false, "error": {"code": "out_of_range", "message": "..."}}

JSON has no infinity: ``-inf`` (e.g. ``background_db``) is written as the
string ``"-inf"`` both ways.

Error codes:

- ``bad_frame``: not one frame, not UTF-8 JSON, not an object, or larger
  than 64 KiB (a frame over 1 MiB gets no reply: ZeroMQ drops that peer's
  connection before the daemon sees it);
- ``bad_version``: ``v`` missing or not 1;
- ``bad_request``: ``id``, ``cmd`` or ``args`` missing or of the wrong type;
- ``unknown_command``: no such command (the message suggests close ones);
- ``bad_args``: an argument is missing, unknown or of the wrong type;
- ``unknown_param``: no such address (the message suggests close ones);
- ``out_of_range``: the value was refused; the message names the range;
- ``not_ready``: the engine is not running yet (waiting for JACK);
- ``unavailable``: the subsystem the command needs is off (e.g. MIDI);
- ``failed``: the command could not be carried out (the message says why);
- ``internal``: a bug; the daemon logged it and carries on.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from typing import Any

from ..errors import ControlError

PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024
ERROR_CODES = ("bad_frame", "bad_version", "bad_request", "unknown_command", "bad_args", "unknown_param",
               "out_of_range", "not_ready", "unavailable", "failed", "internal")

# (list_params/set_params: a submodule named "list" would shadow the builtin here)
_MODULES = ("status", "version", "list_params", "get", "set_params", "bypass", "mute", "load_chain", "save_state", "reload",
            "learn", "subscribe")


class Arg:
    """One argument: its JSON type(s), whether required, and a description."""

    def __init__(self, kind: str, required: bool = True, doc: str = "", default: Any = None,
                 nullable: bool = False):
        self.kind, self.required, self.doc, self.default = kind, required, doc, default
        self.nullable = nullable  # JSON null is a value here, not "absent"

    def check(self, cmd: str, name: str, value: Any) -> Any:
        if value is None and self.nullable:
            return None
        ok = {
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool),
            "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
            "object": isinstance(value, dict),
            "value": isinstance(value, (int, float, str, bool)) and not (isinstance(value, str) and len(value) > 256),
        }[self.kind]
        if not ok:
            raise ControlError("bad_args", f"{cmd}: argument {name!r} must be {self.kind}, got {_short(value)}")
        if isinstance(value, int) and not isinstance(value, bool) and self.kind in ("number", "value"):
            try:
                float(value)
            except OverflowError:  # (JSON allows an integer of 400 digits; float() of it raised "internal")
                raise ControlError("bad_args", f"{cmd}: argument {name!r} is an integer of {len(str(abs(value)))} "
                                               "digits: too large for any parameter") from None
        return value


class Command:
    """Base class. Subclasses set ``name`` and ``args`` and implement
    :meth:`execute`; the class docstring is the specification."""

    name = ""
    args: dict[str, Arg] = {}
    #: runs on the daemon's supervisor thread and may wait for it (seconds, or as long as a JACK
    #: server that does not answer): answered from a worker thread, never the control thread's
    blocking = False

    # client side
    @classmethod
    def message(cls, id: Any = None, **args) -> dict:
        """The request a client sends (arguments checked as the daemon will)."""
        checked = cls.check_args(args)
        return {"v": PROTOCOL_VERSION, "id": id, "cmd": cls.name, "args": checked}

    # both sides
    @classmethod
    def check_args(cls, args: dict) -> dict:
        from quietcast.bridge.errors import did_you_mean

        out = {}
        for k in args:
            if k not in cls.args:
                raise ControlError("bad_args", f"{cls.name}: unknown argument {k!r}{did_you_mean(k, cls.args)}; "
                                               f"arguments: {', '.join(cls.args) or 'none'}")
        for k, a in cls.args.items():
            if k in args and (args[k] is not None or a.nullable):
                out[k] = a.check(cls.name, k, args[k])
            elif a.required:
                raise ControlError("bad_args", f"{cls.name}: missing argument {k!r} ({a.kind}: {a.doc})")
            elif a.default is not None:
                out[k] = a.default
        return out

    # daemon side
    def execute(self, ctx, args: dict) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def _short(v: Any) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
    return (s[:60] + "...") if len(s) > 60 else s


_COMMANDS: dict[str, type[Command]] | None = None


def commands() -> dict[str, type[Command]]:
    """name -> command class, in documentation order."""
    global _COMMANDS
    if _COMMANDS is None:
        out = {}
        for m in _MODULES:
            mod = importlib.import_module(f"{__name__}.{m}")
            for obj in vars(mod).values():
                if inspect.isclass(obj) and issubclass(obj, Command) and obj is not Command and obj.name:
                    out[obj.name] = obj
        _COMMANDS = out
    return _COMMANDS


# --------------------------------------------------------------------------
# JSON with -inf as "-inf"


def _encode_floats(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _encode_floats(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encode_floats(x) for x in v]
    return v


def dumps(doc: Any) -> bytes:
    return json.dumps(_encode_floats(doc), allow_nan=False, default=str, separators=(",", ":")).encode()


def reply_ok(id: Any, result: Any) -> dict:
    return {"v": PROTOCOL_VERSION, "id": id, "ok": True, "result": result}


def reply_error(id: Any, code: str, message: str, details: dict | None = None) -> dict:
    err = {"code": code, "message": message}
    if details:
        err["details"] = details
    return {"v": PROTOCOL_VERSION, "id": id, "ok": False, "error": err}


def parse_request(frame: bytes) -> tuple[Any, str, dict]:
    """``(id, cmd, args)`` from one frame, or ControlError (with the id
    attached as ``.details['id']`` when it could be read)."""
    if len(frame) > MAX_FRAME:
        raise ControlError("bad_frame", f"frame of {len(frame)} bytes is larger than {MAX_FRAME} bytes")
    try:
        doc = json.loads(frame.decode("utf-8"))
    except UnicodeDecodeError:
        raise ControlError("bad_frame", "frame is not UTF-8 text") from None
    except (ValueError, RecursionError):
        raise ControlError("bad_frame", "frame is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ControlError("bad_frame", f"frame must be a JSON object, got {type(doc).__name__}")
    id_ = doc.get("id")
    if not (id_ is None or isinstance(id_, (str, int)) and not isinstance(id_, bool)) or (isinstance(id_, str) and len(id_) > 128):
        raise ControlError("bad_request", "'id' must be a string (at most 128 characters) or an integer")
    details = {"id": id_}
    if doc.get("v") != PROTOCOL_VERSION:
        raise ControlError("bad_version", f"'v' must be {PROTOCOL_VERSION}, got {_short(doc.get('v'))}", details)
    cmd = doc.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ControlError("bad_request", "'cmd' must be a command name, e.g. \"status\"", details)
    args = doc.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ControlError("bad_request", f"'args' must be an object, got {type(args).__name__}", details)
    extra = set(doc) - {"v", "id", "cmd", "args"}
    if extra:
        raise ControlError("bad_request", f"unknown field(s) {', '.join(sorted(map(repr, extra)))}; "
                                          "a request has v, id, cmd, args", details)
    return id_, cmd, args


def find(cmd: str) -> type[Command]:
    from quietcast.bridge.errors import did_you_mean

    cmds = commands()
    if cmd not in cmds:
        raise ControlError("unknown_command", f"unknown command {cmd[:64]!r}{did_you_mean(cmd, cmds)}; "
                                              f"commands: {', '.join(cmds)}")
    return cmds[cmd]


def protocol_markdown() -> str:
    """The protocol reference, from the docstrings (the README embeds it)."""
    lines = []
    for name, cls in commands().items():
        doc = inspect.cleandoc(cls.__doc__ or "")
        args = ", ".join(f"`{k}`" + ("" if a.required else "?") for k, a in cls.args.items()) or "none"
        lines.append(f"#### `{name}`\n\nArguments: {args}.\n\n{doc}\n")
    return "\n".join(lines)
