"""The daemon's configuration: a TOML file checked against a schema that
reports every problem at once.

The file (the shipped example is ``daemon/default.toml``, see
:data:`DEFAULT_CONFIG_PATH`; every key is optional except a channel's
``name``, and at least one ``[[channel]]`` is required)::

    [jack]
    client_name = "quietcast"       # str, 1..48 chars, JACK-safe (no ':')
    server = ""                     # JACK server name; "" = $JACK_DEFAULT_SERVER or "default"
    reconnect_interval_ms = 500     # 50..10000, how often to retry when jackd is gone
    pipewire_quantum = 256          # 0, or 32..8192 frames: the period asked of PipeWire's graph
                                    # (PIPEWIRE_LATENCY); 0 = PipeWire's own; JACK2 ignores it (jackd -p)

    [engine]
    model = "default"               # suppressor for all channels (one batch); one of quietcast.models.available_models(), or a bundle folder
    # max_attenuation_db = 20.0     # 0..60 dB; a channel's strength 1.0 means this much attenuation;
                                    # left out, the model's own default (quietcast models)
    safety_ms = 10.0                # 0..200 ms of extra buffering for the engine's compute time (part of the declared latency)
    max_backlog_ms = 500.0          # 20..5000 ms, more than safety_ms: if the engine falls this far behind it
                                    # skips ahead (output stays on the dry path meanwhile); at most what the
                                    # input ring holds (about 2.6 s at 48 kHz): more is cut to that, with a warning
    threads = 1                     # 1..64 torch/numpy threads for the engine
    device = "auto"                 # auto (a CUDA GPU when present, else the CPU), cpu, cuda or cuda:N;
                                    # a GPU that is missing or fails falls back to the CPU (logged, in status)
    # pitch_filter = 0.5            # 0..1, the neural model's pitch (comb) filter between a voice's harmonics;
                                    # left out, the model's own (quietcast models); 0 = off
    # pause_db = 30.0               # 0..60 dB, the neural model's pause gate: how much further the output falls
                                    # in the pauses of the voice; left out, the model's own; 0 = off
    # pause_threshold = 0.3         # 0.01..1, the gate closes where the pause head's speech probability is
                                    # below this (higher: more eagerly); left out, the model's own

    [[channel]]                     # one or more (at most 256)
    name = "host"                   # [a-z][a-z0-9_]{0,31}, unique; ports are host_in, host_out
                                    # (+ host_voice, host_background with stems)
    chain = ""                      # optional post-chain after the suppressor, see below; "" = none
    strength = 1.0                  # 0..1
    input_gain_db = 0.0             # -60..24
    output_gain_db = 0.0            # -96..24, or -inf (silence)
    background_db = -inf            # -96..0 or -inf: how much of the background (input - voice) is
                                    # mixed back into the main output
    # pause_db = 30.0               # 0..60 dB, this channel's pause gate (neural models with a pause head);
                                    # left out, engine.pause_db (or the model's own); 0 = off
    # pause_threshold = 0.3         # 0.01..1, this channel's pause gate threshold; left out, engine.pause_threshold
                                    # (or the model's own)
    bypass = false
    mute = false
    stems = false                   # also output voice and background ports
    connect_in = []                 # JACK port name patterns (fnmatch, e.g. "system:capture_1",
                                    # "player:out_*") connected to this channel's input, re-applied
                                    # whenever ports appear
    connect_out = []                # patterns for ports this channel's output connects to

Value rules:

- numbers may be written as TOML integers where floats are expected
  (``strength = 1``); strings are never numbers (``strength = "1"`` is an
  error, as is ``bypass = 1``); ``-inf`` is TOML's float ``-inf``, unquoted;
- ranges are checked by :class:`quietcast.bridge.params.Param`, so the
  messages read the same as everywhere else in quietcast
  ("value 2 is out of range [0, 1]");
- ``chain``: a value containing ``/`` (or starting with ``~``) or ending in
  ``.toml`` is a chain file path, relative to the config file's folder
  (``parse_config(base_dir=...)``, else the current folder); any other value
  names a bundled chain (``default``, ``dry``: ``quietcast.bridge.
  bundled_chains()``). The chain is loaded with
  :meth:`quietcast.bridge.Chain.load` and its problems are reported under
  the channel. Note the bundled ``default`` chain has its own ``denoise``
  stage; a post-chain normally should not;
- ``engine.model``: a model name (``quietcast models``) or, with a ``/``
  in it (or a leading ``~``), a ``neural`` bundle folder such as one
  ``python -m quietcast.models.train --out`` wrote, relative to the config
  file's folder; its config and sha256 are checked here;
- each connect pattern must contain ``:`` (a JACK port name is
  ``client:port``).

Errors: :class:`ConfigError` (a :class:`~quietcast.bridge.errors.BridgeError`
and a ``ValueError``) holds every :class:`~quietcast.bridge.errors.Problem`
found in ``.problems``; its message reads::

    quietcast.toml: 2 problems
      - [channel 'guest'] strenght: unknown key (did you mean 'strength'?)
      - [engine] max_attenuation_db: value 80 is out of range [0, 60] dB

API: :func:`load_config`, :func:`parse_config`, :func:`config_from_dict`
give a :class:`Config`; :meth:`Config.to_dict` is the effective config
(defaults filled in, chain paths absolute) and :func:`dump_toml` writes it
back as TOML that parses to an equal :class:`Config`. :func:`describe_schema`
lists every key with its type, range and default. ``cmd_config_*`` are the
bodies of ``quietcast config check|show|schema``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from quietcast.bridge.errors import (
    ChainSpecError, ParameterError, Problem, ProblemsError, did_you_mean, parse_toml, read_utf8,
)
from quietcast.bridge.params import Param

#: the pause gate's channel parameters (neural models with a pause head): left out (None, null) a
#: channel follows the engine's value (engine.pause_db, engine.pause_threshold, or the model's own)
GATE_PARAMS = ("pause_db", "pause_threshold")


__all__ = [
    "DEFAULT_CONFIG_PATH", "MAX_CHANNELS", "ConfigError",
    "JackConfig", "EngineConfig", "ChannelConfig", "Config",
    "load_config", "parse_config", "config_from_dict", "default_config",
    "dump_toml", "to_toml", "describe_schema", "format_schema",
    "cmd_config_check", "cmd_config_show", "cmd_config_schema",
]

DEFAULT_CONFIG_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.toml")
MAX_CHANNELS = 256
CHANNEL_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
CLIENT_NAME_MAX = 48
SERVER_NAME_MAX = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ConfigError(ProblemsError):
    """The config is invalid. ``.problems`` holds every problem found, not
    just the first; ``.source`` names the file (or "config")."""

    default_source = "config"


# --------------------------------------------------------------------------
# the schema


@dataclass(frozen=True)
class Key:
    """One config key: a :class:`Param` (type, default, range, unit, doc)
    plus what a Param cannot say: a list of strings, a required key, and an
    extra check returning a message or None."""

    param: Param
    is_list: bool = False
    required: bool = False
    extra: Callable[[Any], str | None] | None = None
    rule: str = ""  # the extra check, in words (for describe_schema)
    default_text: str = ""  # a None default that is not "required", in words (for format_schema)

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def default(self) -> Any:
        return list(self.param.default) if self.is_list else self.param.default

    def type_text(self) -> str:
        return "list[str]" if self.is_list else self.param.kind

    def check(self, value: Any) -> Any:
        """The value converted, or raise :class:`ParameterError` (address =
        the key). Stricter than ``Param.check`` about TOML types: a string
        is never a number and a number never a boolean."""
        p = self.param
        if self.is_list:
            if not isinstance(value, list):
                raise ParameterError(p.name, f"value {value!r} is not a list of strings; write e.g. {p.name} = [\"system:capture_1\"]")
            out = []
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise ParameterError(p.name, f"item {i + 1} ({item!r}) is not a string")
                if self.extra and (msg := self.extra(item)):
                    raise ParameterError(p.name, f"item {i + 1} ({item!r}) {msg}")
                out.append(item)
            return tuple(out)
        if p.kind in ("float", "int") and isinstance(value, str):
            hint = "; write -inf unquoted" if value.strip().lower() in ("-inf", "inf", "+inf") else " (write numbers without quotes)"
            raise ParameterError(p.name, f"value {value!r} is a string, not a number{hint}; allowed range {p.range_text()}")
        if p.kind == "bool" and not isinstance(value, bool):
            raise ParameterError(p.name, f"value {value!r} is not a boolean (true or false)")
        v = p.check(value)
        if self.extra and (msg := self.extra(v)):
            raise ParameterError(p.name, f"value {v!r} {msg}")
        return v

    def describe(self) -> dict:
        d = self.param.describe()
        d["type"] = self.type_text()
        d["default"] = self.default
        if self.param.kind in ("float", "int"):
            d["range"] = self.param.range_text()
            d["allow_neg_inf"] = self.param.allow_neg_inf
        if self.required:
            d["required"] = True
        if self.rule:
            d["rule"] = self.rule
        if self.default_text:
            d["default_text"] = self.default_text
        return d


def _client_name_rule(v: str) -> str | None:
    if not 1 <= len(v) <= CLIENT_NAME_MAX:
        return f"is not allowed: a JACK client name has 1 to {CLIENT_NAME_MAX} characters"
    if ":" in v:
        return "is not allowed: ':' separates client and port in JACK port names"
    if _CONTROL.search(v):
        return "is not allowed: control characters"
    return None


def _server_rule(v: str) -> str | None:
    if len(v) > SERVER_NAME_MAX:
        return f"is not allowed: at most {SERVER_NAME_MAX} characters"
    if "/" in v or _CONTROL.search(v):
        return "is not allowed: no '/' or control characters in a JACK server name"
    return None


_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,2})?")


def _device_rule(v: str) -> str | None:
    if not _DEVICE.fullmatch(v):
        return "is not allowed: one of auto, cpu, cuda, cuda:N"
    return None


def _channel_name_rule(v: str) -> str | None:
    if not CHANNEL_NAME_RE.match(v):
        return "is not allowed: use 1-32 lower-case letters, digits and '_', starting with a letter"
    return None


def _pattern_rule(v: str) -> str | None:
    if ":" not in v:
        return "is not a JACK port pattern: write CLIENT:PORT, e.g. 'system:capture_1' or 'player:out_*'"
    if _CONTROL.search(v):
        return "contains control characters"
    return None


def _model_rule(v: str) -> str | None:
    from quietcast.models import available_models, is_bundle_path

    if is_bundle_path(v) or v in available_models():
        return None
    known = available_models()
    return (f"is not one of {', '.join(repr(k) for k in known)}{did_you_mean(v, known)}, "
            "nor a bundle folder (a path with a '/', e.g. './mymodel')")


def _model_key() -> Key:
    from quietcast.models import available_models

    return Key(Param("model", "str", "default",
                     doc="suppressor for all channels, run as one batch (quietcast models), or a neural bundle "
                         "folder (a path with a '/', relative to this file)"),
               extra=_model_rule, rule=f"one of {', '.join(available_models())}, or a bundle folder")


JACK_KEYS: tuple[Key, ...] = (
    Key(Param("client_name", "str", "quietcast", doc="JACK client name; ports are CLIENT:CHANNEL_in ..."),
        extra=_client_name_rule, rule=f"1..{CLIENT_NAME_MAX} characters, no ':'"),
    Key(Param("server", "str", "", doc="JACK server name; \"\" = $JACK_DEFAULT_SERVER or \"default\""),
        extra=_server_rule, rule=f"at most {SERVER_NAME_MAX} characters, no '/'"),
    Key(Param("reconnect_interval_ms", "int", 500, 50, 10_000, "ms", doc="how often to retry when jackd is gone")),
    Key(Param("pipewire_quantum", "int", 256, 0, 8192, "frames",
              doc="under PipeWire's JACK layer, the period the daemon asks of the graph (PIPEWIRE_LATENCY, "
                  "QUANTUM/48000; an explicit PIPEWIRE_LATENCY wins); 0 = ask for none (PipeWire's own, 1024 by "
                  "default); JACK2 ignores it (its period is jackd's -p)"),
        extra=lambda v: None if v == 0 or v >= 32 else "is not allowed: 0 (none), or 32..8192 frames",
        rule="0, or 32..8192"),
)

ENGINE_KEYS_STATIC: tuple[Key, ...] = (
    Key(Param("max_attenuation_db", "float", None, 0.0, 60.0, "dB",
              doc="attenuation at a channel's strength 1.0; left out, the model's own default "
                  "(quietcast models: the default bundle's, dsp 15 dB)"),
        default_text="model's"),
    Key(Param("safety_ms", "float", 10.0, 0.0, 200.0, "ms",
              doc="extra buffering for the engine's compute time (part of the declared latency)")),
    Key(Param("max_backlog_ms", "float", 500.0, 20.0, 5000.0, "ms",
              doc="if the engine falls this far behind it skips ahead (output stays on the dry path meanwhile)"),
        rule="more than safety_ms"),
    Key(Param("threads", "int", 1, 1, 64, doc="torch/numpy threads for the engine")),
    Key(Param("device", "str", "auto", doc="where the suppressor runs: auto (a CUDA GPU when present), cpu, cuda, "
                                           "cuda:N; a missing or failing GPU falls back to the CPU (logged)"),
        extra=_device_rule, rule="auto, cpu, cuda or cuda:N"),
    Key(Param("pitch_filter", "float", None, 0.0, 1.0,
              doc="strength of the neural model's pitch (comb) filter, which cleans between a voice's harmonics; "
                  "left out, the model's own (quietcast models); 0 = off"),
        default_text="model's"),
    Key(Param("pause_db", "float", None, 0.0, 60.0, "dB",
              doc="the neural model's pause gate: how much further the output falls in the pauses of the voice "
                  "(its pause head's decision); left out, the model's own (quietcast models); 0 = off"),
        default_text="model's"),
    Key(Param("pause_threshold", "float", None, 0.01, 1.0,
              doc="the pause gate closes where the pause head's speech probability is below this (higher: more "
                  "eagerly); left out, the model's own"),
        default_text="model's"),
)


def engine_keys() -> tuple[Key, ...]:
    """``model`` comes first; its choices are read from quietcast.models now."""
    return (_model_key(), *ENGINE_KEYS_STATIC)


CHANNEL_KEYS: tuple[Key, ...] = (
    Key(Param("name", "str", None, doc="channel name; ports NAME_in, NAME_out (+ NAME_voice, NAME_background with stems)"),
        required=True, extra=_channel_name_rule, rule="[a-z][a-z0-9_]{0,31}, unique"),
    Key(Param("chain", "str", "", doc="post-chain after the suppressor: a chain TOML path (relative to the config "
                                      "file) or a bundled chain name; \"\" = none")),
    Key(Param("strength", "float", 1.0, 0.0, 1.0, doc="share of engine.max_attenuation_db to apply")),
    Key(Param("input_gain_db", "float", 0.0, -60.0, 24.0, "dB")),
    Key(Param("output_gain_db", "float", 0.0, -96.0, 24.0, "dB", allow_neg_inf=True, doc="-inf = silence")),
    Key(Param("background_db", "float", -math.inf, -96.0, 0.0, "dB", allow_neg_inf=True,
              doc="how much of the background (input - voice) is mixed back into the main output")),
    Key(Param("pause_db", "float", None, 0.0, 60.0, "dB",
              doc="this channel's pause gate: how much further its output falls in the pauses of the voice "
                  "(neural models with a pause head); left out, engine.pause_db (or the model's own); 0 = off"),
        default_text="engine's"),
    Key(Param("pause_threshold", "float", None, 0.01, 1.0,
              doc="this channel's pause gate closes where the pause head's speech probability is below this "
                  "(higher: more eagerly); left out, engine.pause_threshold (or the model's own)"),
        default_text="engine's"),
    Key(Param("bypass", "bool", False, doc="output the input, delayed by the declared latency")),
    Key(Param("mute", "bool", False, doc="silence the outputs")),
    Key(Param("stems", "bool", False, doc="also output voice and background ports")),
    Key(Param("connect_in", "str", (), doc="JACK port patterns (fnmatch) connected to this channel's input, "
                                          "re-applied whenever ports appear"),
        is_list=True, extra=_pattern_rule, rule="each 'client:port' (fnmatch wildcards allowed)"),
    Key(Param("connect_out", "str", (), doc="JACK port patterns this channel's output connects to"),
        is_list=True, extra=_pattern_rule, rule="each 'client:port' (fnmatch wildcards allowed)"),
)

def _endpoint_rule(v: str) -> str | None:
    if v and not re.match(r"^(ipc|tcp)://\S+$", v):
        return "is not a ZeroMQ endpoint: write ipc:///path/to/socket or tcp://127.0.0.1:PORT (or \"\" for the default)"
    if v.startswith("tcp://"):
        host, sep, port = v[len("tcp://"):].rpartition(":")
        if not sep or not host:
            return "has no port: write tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555"
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            return f"has port {port!r}: a TCP port is a number 1..65535"
    return None


CONTROL_KEYS: tuple[Key, ...] = (
    Key(Param("enabled", "bool", True, doc="serve the ZeroMQ control socket and the event stream")),
    Key(Param("bind", "str", "", doc="command endpoint (ROUTER); \"\" = ipc://$RUNTIME_DIRECTORY/control"),
        extra=_endpoint_rule, rule="ipc://PATH or tcp://HOST:PORT (PORT 1..65535); non-loopback tcp needs CURVE keys"),
    Key(Param("events", "str", "", doc="event endpoint (PUB); \"\" = ipc://$RUNTIME_DIRECTORY/events"),
        extra=_endpoint_rule, rule="ipc://PATH or tcp://HOST:PORT (PORT 1..65535)"),
    Key(Param("curve_secret_key", "str", "", doc="server secret key file (quietcast keys generate); enables CURVE")),
    Key(Param("curve_clients", "str", "", doc="folder of authorised client public key files (*.key)")),
    Key(Param("meter_hz", "float", 20.0, 1.0, 60.0, "Hz", doc="rate of meter.CHANNEL messages")),
)

MIDI_KEYS: tuple[Key, ...] = (
    Key(Param("enabled", "bool", True, doc="MIDI control (a JACK MIDI in/out port pair always; hardware by name)")),
    Key(Param("inputs", "str", (), doc="hardware MIDI input ports (ALSA), by name or part of it"), is_list=True),
    Key(Param("outputs", "str", (), doc="hardware MIDI output ports for feedback (LEDs, motor faders)"), is_list=True),
    Key(Param("mapping", "str", "", doc="mapping file (TOML); \"\" = midi.toml in the state directory; "
                                        "MIDI learn saves bindings here")),
)

STATE_KEYS: tuple[Key, ...] = (
    Key(Param("enabled", "bool", True, doc="keep parameter values (and MIDI bindings) across restarts")),
    Key(Param("file", "str", "", doc="state file; \"\" = state.json in $STATE_DIRECTORY (or ~/.local/state/quietcast)")),
    Key(Param("restore", "bool", True, doc="restore saved parameter values at start")),
    Key(Param("save_debounce_ms", "int", 1000, 0, 60_000, "ms", doc="wait this long after a change before saving")),
)

SECTIONS = ("jack", "engine", "control", "midi", "state", "channel")


def _section_keys(section: str) -> tuple[Key, ...]:
    return {"jack": JACK_KEYS, "engine": engine_keys(), "control": CONTROL_KEYS, "midi": MIDI_KEYS,
            "state": STATE_KEYS, "channel": CHANNEL_KEYS}[section]


# --------------------------------------------------------------------------
# the checked config


def _db_to_gain(db: float) -> float:
    return 0.0 if db == -math.inf else 10.0 ** (db / 20.0)


@dataclass(frozen=True)
class JackConfig:
    client_name: str = "quietcast"
    server: str = ""
    reconnect_interval_ms: int = 500
    pipewire_quantum: int = 256

    def pipewire_latency(self, environ: dict | None = None) -> str | None:
        """What ``PIPEWIRE_LATENCY`` the daemon's JACK clients run with
        (PipeWire's JACK layer reads it at each client's open; JACK2 never
        does): one already in the environment, else ``QUANTUM/48000`` from
        :attr:`pipewire_quantum`, else None."""
        env = os.environ if environ is None else environ
        if env.get("PIPEWIRE_LATENCY"):
            return env["PIPEWIRE_LATENCY"]
        return f"{self.pipewire_quantum}/48000" if self.pipewire_quantum else None

    def resolved_server(self, environ: dict | None = None) -> str:
        """The server to open: ``server``, else $JACK_DEFAULT_SERVER, else "default"."""
        env = os.environ if environ is None else environ
        return self.server or env.get("JACK_DEFAULT_SERVER") or "default"


@dataclass(frozen=True)
class EngineConfig:
    model: str = "default"
    max_attenuation_db: float | None = None  # None: the model's own default strength
    safety_ms: float = 10.0
    max_backlog_ms: float = 500.0
    threads: int = 1
    device: str = "auto"
    pitch_filter: float | None = None  # None: the model's own
    pause_db: float | None = None  # None: the model's own
    pause_threshold: float | None = None  # None: the model's own


@dataclass(frozen=True)
class ControlConfig:
    enabled: bool = True
    bind: str = ""
    events: str = ""
    curve_secret_key: str = ""
    curve_clients: str = ""
    meter_hz: float = 20.0


@dataclass(frozen=True)
class MidiConfig:
    enabled: bool = True
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    mapping: str = ""


@dataclass(frozen=True)
class StateConfig:
    enabled: bool = True
    file: str = ""
    restore: bool = True
    save_debounce_ms: int = 1000


@dataclass(frozen=True)
class ChannelConfig:
    """One channel. ``chain`` is "" (none), a bundled chain name, or an
    absolute chain file path; ``chain_spec`` is that chain, already loaded
    and checked (``None`` for none)."""

    name: str
    chain: str = ""
    strength: float = 1.0
    input_gain_db: float = 0.0
    output_gain_db: float = 0.0
    background_db: float = -math.inf
    pause_db: float | None = None  # None: engine.pause_db, or the model's own
    pause_threshold: float | None = None  # None: engine.pause_threshold, or the model's own
    bypass: bool = False
    mute: bool = False
    stems: bool = False
    connect_in: tuple[str, ...] = ()
    connect_out: tuple[str, ...] = ()
    chain_spec: Any = field(default=None, compare=False, repr=False)

    def ports(self) -> dict[str, str]:
        """Role -> JACK port short name: in, out (+ voice, background with stems)."""
        p = {"in": f"{self.name}_in", "out": f"{self.name}_out"}
        if self.stems:
            p.update(voice=f"{self.name}_voice", background=f"{self.name}_background")
        return p

    @property
    def input_gain(self) -> float:
        return _db_to_gain(self.input_gain_db)

    @property
    def output_gain(self) -> float:
        return _db_to_gain(self.output_gain_db)

    @property
    def background_gain(self) -> float:
        return _db_to_gain(self.background_db)

    def to_dict(self) -> dict:
        d = {}
        for f in fields(self):
            if f.name == "chain_spec":
                continue
            v = getattr(self, f.name)
            if v is None and f.name in GATE_PARAMS:  # left to the engine, as in the file
                continue
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d


@dataclass(frozen=True)
class Config:
    """A checked config. ``path`` is the absolute path of the file it came
    from (None for text); it is not part of equality."""

    jack: JackConfig = field(default_factory=JackConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    channels: list[ChannelConfig] = field(default_factory=list)
    path: str | None = field(default=None, compare=False)
    control: ControlConfig = field(default_factory=ControlConfig)
    midi: MidiConfig = field(default_factory=MidiConfig)
    state: StateConfig = field(default_factory=StateConfig)

    def channel(self, name: str) -> ChannelConfig:
        for ch in self.channels:
            if ch.name == name:
                return ch
        names = [c.name for c in self.channels]
        raise ParameterError(name, f"no channel of that name{did_you_mean(name, names)}; channels: {', '.join(names) or 'none'}")

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    def to_dict(self) -> dict:
        """The effective config: every key, defaults filled in, chain paths
        absolute; ``dump_toml``/``parse_config`` round-trip it."""
        return {
            "jack": {f.name: getattr(self.jack, f.name) for f in fields(self.jack)},
            # a key left to the model (None) is left out, as in the file
            "engine": {f.name: v for f in fields(self.engine) if (v := getattr(self.engine, f.name)) is not None},
            **{sec: {f.name: (list(v) if isinstance(v := getattr(getattr(self, sec), f.name), tuple) else v)
                     for f in fields(getattr(self, sec))} for sec in ("control", "midi", "state")},
            "channel": [c.to_dict() for c in self.channels],
        }


# --------------------------------------------------------------------------
# checking


def _key_problem(where: str, err: ParameterError) -> Problem:
    msg = str(err)
    prefix = f"{err.address}: "
    if msg.startswith(prefix):
        msg = msg[len(prefix):]
    return Problem(f"{where} {err.address}", msg)


def _check_table(raw: dict, keys: tuple[Key, ...], where: str, problems: list[Problem]) -> dict:
    """Checked values of the keys present in ``raw`` (bad ones left out)."""
    by_name = {k.name: k for k in keys}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        key = by_name.get(name)
        if key is None:
            hint = did_you_mean(name, by_name)
            if not hint:
                hint = "; known keys: " + ", ".join(by_name)
            problems.append(Problem(f"{where} {name}", f"unknown key{hint}"))
            continue
        try:
            out[name] = key.check(value)
        except ParameterError as e:
            problems.append(_key_problem(where, e))
    return out


def _as_table(doc: dict, section: str, problems: list[Problem]) -> dict:
    raw = doc.get(section, {})
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, list):
        problems.append(Problem(f"[{section}]", f"must be one table: write [{section}] (single brackets), not [[{section}]]"))
    else:
        problems.append(Problem(f"[{section}]", f"must be a table, got {type(raw).__name__} {raw!r}: write [{section}] and its keys below it"))
    return {}


def _resolve_model_path(engine: dict, base_dir: str | None, problems: list[Problem]) -> None:
    """``engine.model`` as a bundle folder: made absolute (relative to the
    config file's folder) and checked (config and sha256, no torch)."""
    from quietcast.models import bundle_folder, is_bundle_path

    v = engine["model"]
    if not is_bundle_path(v):
        return
    try:
        engine["model"] = bundle_folder(v, base_dir)
    except ValueError as e:
        problems.append(Problem("[engine] model", f"{v!r}: {e}"))


def _resolve_chain(value: str, base_dir: str | None) -> tuple[str, str | None, str | None]:
    """``(effective value, file to load, problem)`` for a channel's chain."""
    from quietcast.bridge import bundled_chains

    if value == "":
        return "", None, None
    is_path = value.endswith(".toml") or "/" in value or os.sep in value or value.startswith("~")
    if is_path:
        path = os.path.expanduser(value)
        if not os.path.isabs(path):
            path = os.path.join(base_dir if base_dir is not None else os.getcwd(), path)
        path = os.path.normpath(os.path.abspath(path))
        return path, path, None
    bundled = bundled_chains()
    if value in bundled:
        return value, bundled[value], None
    return value, None, (
        f"no bundled chain {value!r}{did_you_mean(value, bundled)}; bundled: {', '.join(sorted(bundled)) or 'none'}; "
        f"for a file write a path ending in .toml or containing '/', e.g. './{value}.toml'"
    )


def _load_chain(where: str, value: str, base_dir: str | None, problems: list[Problem]):
    from quietcast.bridge import Chain

    effective, target, prob = _resolve_chain(value, base_dir)
    if prob:
        problems.append(Problem(f"{where} chain", prob))
        return effective, None
    if target is None:
        return effective, None
    try:
        return effective, Chain.load(target)
    except ChainSpecError as e:
        for p in e.problems:
            problems.append(Problem(f"{where} chain", f"{e.source}: {p}"))
        return effective, None


def _check_channel(raw: Any, index: int, seen: dict, base_dir: str | None, problems: list[Problem]) -> ChannelConfig | None:
    where = f"[channel {index + 1}]"
    if not isinstance(raw, dict):
        problems.append(Problem(where, f"must be a table of keys, got {type(raw).__name__} {raw!r}"))
        return None
    n0 = len(problems)
    name = raw.get("name")
    if "name" not in raw:
        problems.append(Problem(f"{where} name", "missing (required): e.g. name = \"host\"; ports are NAME_in, NAME_out"))
    else:
        try:
            name = CHANNEL_KEYS[0].check(name)
        except ParameterError as e:
            problems.append(_key_problem(where, e))
            name = None
        else:
            if name in seen:
                problems.append(Problem(f"{where} name", f"{name!r} is already used by channel {seen[name] + 1}; channel names must be unique"))
            else:
                seen[name] = index
                where = f"[channel {name!r}]"
    values = _check_table({k: v for k, v in raw.items() if k != "name"}, CHANNEL_KEYS, where, problems)
    spec = None
    if values.get("chain"):
        values["chain"], spec = _load_chain(where, values["chain"], base_dir, problems)
    if len(problems) > n0:
        return None
    return ChannelConfig(name=name, chain_spec=spec, **values)


def config_from_dict(doc: Any, source: str = "config", base_dir: str | None = None, path: str | None = None) -> Config:
    """Check a parsed TOML document; raise :class:`ConfigError` with every
    problem, or return the :class:`Config`. ``base_dir`` anchors relative
    chain paths (default: the current folder)."""
    problems: list[Problem] = []
    if not isinstance(doc, dict):
        raise ConfigError([Problem("", "the config must be a TOML table with [jack], [engine] and [[channel]] sections")], source)
    all_keys = {s: [k.name for k in _section_keys(s)] for s in SECTIONS}
    for key, value in doc.items():
        if key in SECTIONS:
            continue
        owner = next((s for s, names in all_keys.items() if key in names), None)
        if owner and not isinstance(value, dict):
            fmt = "[[channel]]" if owner == "channel" else f"[{owner}]"
            problems.append(Problem(key, f"unknown key at the top level: it belongs in the {fmt} section; write it below a {fmt} line"))
        else:
            problems.append(Problem(f"[{key}]", f"unknown section{did_you_mean(key, SECTIONS)}; sections: [jack], [engine], "
                                                 "[control], [midi], [state], [[channel]]"))

    jack = _check_table(_as_table(doc, "jack", problems), JACK_KEYS, "[jack]", problems)
    control = _check_table(_as_table(doc, "control", problems), CONTROL_KEYS, "[control]", problems)
    midi = _check_table(_as_table(doc, "midi", problems), MIDI_KEYS, "[midi]", problems)
    state = _check_table(_as_table(doc, "state", problems), STATE_KEYS, "[state]", problems)
    for sec, vals, keys in (("control", control, ("curve_secret_key", "curve_clients")), ("midi", midi, ("mapping",)),
                            ("state", state, ("file",))):
        for k in keys:  # paths relative to the config file
            if vals.get(k):
                v = os.path.expanduser(vals[k])
                vals[k] = os.path.normpath(os.path.join(base_dir if base_dir is not None else os.getcwd(), v))
    engine = _check_table(_as_table(doc, "engine", problems), engine_keys(), "[engine]", problems)
    if engine.get("model"):
        _resolve_model_path(engine, base_dir, problems)
    safety = engine.get("safety_ms", EngineConfig.safety_ms)
    backlog = engine.get("max_backlog_ms", EngineConfig.max_backlog_ms)
    if backlog <= safety:
        problems.append(Problem("[engine] max_backlog_ms", f"value {backlog:g} must be more than safety_ms ({safety:g} ms): "
                                                           "falling behind by the safety buffer is normal operation"))

    raw_channels = doc.get("channel", [])
    if isinstance(raw_channels, dict):
        problems.append(Problem("[channel]", "write each channel under [[channel]] (double brackets), not [channel]"))
        raw_channels = [raw_channels]
    elif not isinstance(raw_channels, list):
        problems.append(Problem("[[channel]]", f"must be an array of tables, got {type(raw_channels).__name__} {raw_channels!r}: "
                                               "write each channel under [[channel]]"))
    elif not raw_channels:
        problems.append(Problem("[[channel]]", "no channels: add at least one: a [[channel]] line, then name = \"host\" below it"))
    elif len(raw_channels) > MAX_CHANNELS:
        problems.append(Problem("[[channel]]", f"{len(raw_channels)} channels: at most {MAX_CHANNELS} are allowed"))
    if not isinstance(raw_channels, list):
        raw_channels = []
    channels = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_channels):
        ch = _check_channel(raw, i, seen, base_dir, problems)
        if ch:
            channels.append(ch)
    if problems:
        raise ConfigError(problems, source)
    return Config(JackConfig(**jack), EngineConfig(**engine), channels, path,
                  ControlConfig(**control), MidiConfig(**midi), StateConfig(**state))


def parse_config(text: str, source: str = "config", base_dir: str | None = None, path: str | None = None) -> Config:
    """Check config TOML text (see :func:`config_from_dict`)."""
    return config_from_dict(parse_toml(text, source, ConfigError), source=source, base_dir=base_dir, path=path)


def load_config(path: str | os.PathLike) -> Config:
    """Read and check a config file; relative chain paths are relative to
    its folder. Every problem, including an unreadable or non-UTF-8 file,
    is a :class:`ConfigError`."""
    path = os.fspath(path)
    text = read_utf8(path, "config file", ConfigError)
    full = os.path.abspath(path)
    return parse_config(text, source=path, base_dir=os.path.dirname(full), path=full)


def default_config() -> Config:
    """The shipped example config (:data:`DEFAULT_CONFIG_PATH`)."""
    return load_config(DEFAULT_CONFIG_PATH)


# --------------------------------------------------------------------------
# writing TOML (tomllib only reads)

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _str(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _str(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _emit(table: dict, path: list[str], lines: list[str]) -> None:
    for k, v in table.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        sub = path + [_key(k)]
        if isinstance(v, dict):
            if lines:
                lines.append("")
            lines.append(f"[{'.'.join(sub)}]")
            _emit(v, sub, lines)
        elif _is_table_array(v):
            for item in v:
                if lines:
                    lines.append("")
                lines.append(f"[[{'.'.join(sub)}]]")
                _emit(item, sub, lines)


def to_toml(doc: dict) -> str:
    """TOML text for a dict of str/int/float (inf, nan)/bool/lists/dicts;
    lists of dicts become arrays of tables. ``None`` is not TOML: TypeError."""
    lines: list[str] = []
    _emit(doc, [], lines)
    return "\n".join(lines) + "\n"


def dump_toml(config: Config | dict, header: str | None = None) -> str:
    """The effective config as TOML; ``parse_config`` of it gives an equal
    :class:`Config`. ``header`` lines are written first as comments."""
    doc = config.to_dict() if isinstance(config, Config) else config
    text = to_toml(doc)
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + "\n" + text
    return text


# --------------------------------------------------------------------------
# schema description and CLI bodies


def describe_schema() -> dict[str, list[dict]]:
    """Section -> its keys (name, type, default, unit, min/max/range, choices,
    doc, required, rule), in file order."""
    return {s: [k.describe() for k in _section_keys(s)] for s in SECTIONS}


def _fmt_default(v: Any) -> str:
    if isinstance(v, (list, tuple, bool, float, int, str)):
        return _value(v)
    return "(required)" if v is None else str(v)


def format_schema() -> str:
    """:func:`describe_schema` as text for ``quietcast config schema``."""
    out = []
    for section, keys in describe_schema().items():
        out.append("[[channel]]  (1 to %d, at least one)" % MAX_CHANNELS if section == "channel" else f"[{section}]")
        for k in keys:
            if k["type"] in ("float", "int"):
                what = k["range"]
            elif k["type"] == "choice":
                what = "one of " + ", ".join(k["choices"])
            else:
                what = k.get("rule", "")
            if k.get("required"):
                default = "(required)"
            elif k["default"] is None and k.get("default_text"):
                default = k["default_text"]
            else:
                default = _fmt_default(k["default"])
            out.append(f"  {k['name']:<22} {k['type']:<9} default {default:<12} {what}".rstrip())
            if k.get("doc"):
                out.append(f"  {'':<22} {k['doc']}")
        out.append("")
    return "\n".join(out)


def cmd_config_check(path: str | os.PathLike, build_chains: bool = True) -> tuple[bool, str]:
    """``quietcast config check FILE``: ``(ok, text)``; the text lists every
    problem, or summarises the config. Besides the file itself it runs what
    ``quietcast run`` checks before it starts, without a JACK server
    (:func:`quietcast.daemon.preflight.startup_problems`): the control
    endpoints and CURVE key files; with ``build_chains`` also each channel's
    chain and the engine, built once (a plugin that does not load, a pause
    gate the model lacks), and the MIDI mapping file against them (without,
    the mapping file is checked on its own)."""
    path = os.fspath(path)
    try:
        cfg = load_config(path)
        if build_chains:
            from .preflight import startup_problems

            probs = startup_problems(cfg)
        else:
            from .control import endpoint_problems
            from .preflight import midi_mapping_problems

            probs = (endpoint_problems(cfg.control) if cfg.control.enabled else []) + midi_mapping_problems(cfg)
        if probs:
            raise ConfigError(probs, path)
    except ConfigError as e:
        return False, str(e)
    chans = ", ".join(
        c.name + (f" (chain {os.path.basename(c.chain) if os.path.isabs(c.chain) else c.chain})" if c.chain else "")
        for c in cfg.channels
    )
    n = len(cfg.channels)
    return True, (f"{path}: OK: {n} channel{'s' if n != 1 else ''} ({chans}), model {cfg.engine.model!r}, "
                  f"JACK client {cfg.jack.client_name!r} on server {cfg.jack.resolved_server()!r}")


#: engine keys a config may leave to the model (left out of the TOML, shown as comments by config show)
MODEL_KEYS = ("max_attenuation_db", "pitch_filter", *GATE_PARAMS)


def _model_defaults(model: str) -> dict[str, float | None] | None:
    """The model's own value of each :data:`MODEL_KEYS` key (None for one
    the model lacks: ``dsp`` has no pitch filter and no pause gate), or
    None when the model does not load."""
    try:
        from quietcast.models import create_suppressor

        p = create_suppressor(model, 1, device="cpu").PARAMS
    except Exception:
        return None
    own = {"max_attenuation_db": "strength_db", "pitch_filter": "pitch_filter", "pause_db": "pause_db",
           "pause_threshold": "pause_threshold"}
    return {k: (float(p[name][2]) if name in p else None) for k, name in own.items()}


def _insert_after_table(lines: list[str], header: str, nth: int, extra: list[str]) -> None:
    """Put ``extra`` after the keys of the ``nth`` table headed ``header``."""
    seen = -1
    for i, line in enumerate(lines):
        if line == header:
            seen += 1
            if seen == nth:
                j = i + 1
                while j < len(lines) and lines[j] and not lines[j].startswith("["):
                    j += 1
                lines[j:j] = extra
                return


def cmd_config_show(path: str | os.PathLike | None = None) -> str:
    """``quietcast config show [FILE]``: the effective config as TOML (None =
    the shipped default). Raises :class:`ConfigError` for a bad file. Every
    key is there: one left to the model (``[engine] max_attenuation_db``,
    ``pitch_filter``, ``pause_db``, ``pause_threshold``) or to the engine
    (a channel's ``pause_db`` and ``pause_threshold``) is a comment with the
    value it gets, so the text still reads back as the same config."""
    cfg = load_config(DEFAULT_CONFIG_PATH if path is None else path)
    src = "the shipped default" if path is None else cfg.path
    header = (f"quietcast effective config from {src}\n(every key, defaults filled in, chain paths absolute;\n"
              "a key left to the model or to the engine is a comment with the value it gets)")
    lines = dump_toml(cfg, header=header).split("\n")
    e, model = cfg.engine, cfg.engine.model
    left = [k for k in MODEL_KEYS if getattr(e, k) is None]
    own = _model_defaults(model) if left or any(getattr(c, g) is None for c in cfg.channels for g in GATE_PARAMS) else {}

    def comment(key: str, value: float | None, whose: str) -> str:
        return f"# {key} = {_value(value)}".ljust(34) + f"# not set: {whose}"

    extra = []
    for k in left:
        if own is None:
            extra.append(f"# {k}: not set: the model's own (see quietcast models)")
        elif own[k] is None:
            extra.append(f"# {k}: not set (model {model!r} has no {'pitch filter' if k == 'pitch_filter' else 'pause gate'})")
        else:
            extra.append(comment(k, own[k], "the model's own"))
    _insert_after_table(lines, "[engine]", 0, extra)
    for i, c in enumerate(cfg.channels):
        extra = []
        for g in GATE_PARAMS:
            if getattr(c, g) is not None:
                continue
            v = getattr(e, g) if getattr(e, g) is not None else (own or {}).get(g)
            if own is not None and own.get(g) is None and getattr(e, g) is None:
                continue  # the model has no pause gate: nothing to follow
            if v is None:
                extra.append(f"# {g}: not set: the engine's (engine.{g}, or the model's own)")
            else:
                extra.append(comment(g, v, "the engine's" + (f" (engine.{g})" if getattr(e, g) is not None
                                                             else " (the model's own)")))
        _insert_after_table(lines, "[[channel]]", i, extra)
    return "\n".join(lines)


def cmd_config_schema(as_json: bool = False) -> str:
    """``quietcast config schema [--json]``: every key, type, range, default."""
    if as_json:
        import json

        def enc(o):
            if isinstance(o, float) and math.isinf(o):
                return "-inf" if o < 0 else "inf"
            return o

        def walk(o):
            if isinstance(o, dict):
                return {k: walk(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [walk(v) for v in o]
            return enc(o)

        return json.dumps(walk(describe_schema()), indent=2)
    return format_schema()
