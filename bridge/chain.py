"""Effect chains: an ordered list of named stages, from TOML or Python.

TOML (one ``[[stage]]`` table per stage; every key but ``name``, ``type``
and ``bypass`` is a parameter of the stage type)::

    name = "voice"                 # optional
    [[stage]]
    name = "hp"
    type = "highpass"              # any streamable pedalboard built-in
    cutoff_frequency_hz = 80
    [[stage]]
    name = "nr"
    type = "denoise"               # a quietcast suppressor
    model = "default"
    strength = 0.9
    [[stage]]
    name = "verb"
    type = "plugin"                # a VST3 plugin hosted by pedalboard
    path = "/usr/lib/vst3/some.vst3"
    params = { mix = 0.2 }

Python, with the same names::

    chain = Chain([
        {"name": "hp", "type": "highpass", "cutoff_frequency_hz": 80},
        {"name": "nr", "type": "denoise", "strength": 0.9},
    ])
    proc = chain.processor(sample_rate=48000, channels=2)
    out = proc.process(block)            # streaming, delayed by proc.latency
    whole = chain.process_array(x, 48000)  # one array, latency removed

Every problem of a chain is reported at once (:class:`ChainSpecError`),
with "did you mean" hints for misspelt types and parameters.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .errors import ChainSpecError, ParameterError, PluginLoadError, Problem, did_you_mean, parse_toml, read_utf8
from .stages import COMMON, MixStage, Stage, build_stage, params_of, resolve_type

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TOP_KEYS = ("name", "description", "stage")
SAMPLE_RATES = (1000, 384_000)  # the sample rates (Hz) a chain runs at


@dataclass
class StageSpec:
    """One checked stage: its name, canonical type, parameter values (only
    those given) and bypass flag."""

    name: str
    type: str
    values: dict[str, Any] = field(default_factory=dict)
    bypass: bool = False

    def to_dict(self) -> dict:
        d = {"name": self.name, "type": self.type, **self.values}
        if self.bypass:
            d["bypass"] = True
        return d


def _beside(base_dir: str | None, path: str) -> str:
    """A path a chain file names (a plugin, an impulse response): ``~``
    expanded, and a relative one taken from the chain file's folder."""
    path = os.path.expanduser(path)
    if base_dir and not os.path.isabs(path):
        path = os.path.normpath(os.path.join(base_dir, path))
    return path


def _check_stage(raw: Any, index: int, seen: set, base_dir: str | None, problems: list[Problem]) -> StageSpec | None:
    where = f"stage {index + 1}"
    if not isinstance(raw, dict):
        problems.append(Problem(where, f"must be a table of keys, got {type(raw).__name__}"))
        return None
    ok = True
    name = raw.get("name")
    if name is None:
        problems.append(Problem(where, "missing 'name' (lower-case letters, digits, '_'; e.g. name = \"nr\")"))
        ok = False
    elif not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(Problem(where, f"name {name!r} is not allowed: use 1-32 lower-case letters, digits and '_', starting with a letter"))
        ok = False
    elif name in seen:
        problems.append(Problem(where, f"name {name!r} is used by an earlier stage; stage names must be unique"))
        ok = False
    else:
        seen.add(name)
        where = f"stage {name!r}"
    if "type" not in raw:
        problems.append(Problem(where, "missing 'type'"))
        return None
    stype, prob = resolve_type(raw["type"])
    if prob:
        problems.append(Problem(where, prob.message))
        return None
    params = params_of(stype)
    values: dict[str, Any] = {}
    bypass = False
    for key, val in raw.items():
        if key in ("name", "type"):
            continue
        if key == "bypass":
            try:
                bypass = COMMON.get("bypass").check(val)
            except ParameterError as e:
                problems.append(Problem(where, str(e)))
            continue
        if key not in params:
            known = ", ".join(["bypass", *(p.name for p in params)])
            problems.append(Problem(where, f"unknown parameter {key!r} for type {stype!r}{did_you_mean(key, [p.name for p in params] + ['bypass'])}; known: {known}"))
            ok = False
            continue
        try:
            values[key] = params.get(key).check(val)
        except ParameterError as e:
            problems.append(Problem(where, str(e)))
            ok = False
    if stype == "plugin":
        path = values.get("path")
        if not path:
            problems.append(Problem(where, "a 'plugin' stage needs path = \"/path/to/plugin.vst3\""))
            ok = False
        else:
            path = values["path"] = _beside(base_dir, path)
            if not os.path.exists(path):
                problems.append(Problem(where, f"plugin path {path!r} does not exist"))
                ok = False
    if stype == "convolution":
        ir = values.get("impulse_response_filename")
        if not ir:
            problems.append(Problem(where, "a 'convolution' stage needs impulse_response_filename"))
            ok = False
        else:  # relative to the chain file, like a plugin's path (not to the current folder)
            ir = values["impulse_response_filename"] = _beside(base_dir, ir)
            if not os.path.exists(ir):
                problems.append(Problem(where, f"impulse response {ir!r} does not exist"))
                ok = False
            elif os.path.isdir(ir):
                problems.append(Problem(where, f"impulse response {ir!r} is a folder, not an audio file"))
                ok = False
    if stype == "denoise" and "model" in values:
        from quietcast.models import available_models, bundle_folder, is_bundle_path

        if is_bundle_path(values["model"]):  # a neural bundle folder, relative to the chain file
            try:
                values["model"] = bundle_folder(values["model"], base_dir)
            except ValueError as e:
                problems.append(Problem(where, f"model {values['model']!r}: {e}"))
                ok = False
        elif values["model"] not in available_models():
            problems.append(Problem(where, f"model {values['model']!r} is unknown{did_you_mean(values['model'], available_models())}; "
                                           f"known models: {', '.join(available_models())}, or a bundle folder (a path with a '/')"))
            ok = False
    return StageSpec(name, stype, values, bypass) if ok else None


class Chain:
    """A checked, immutable chain description. Build a running
    :class:`ChainProcessor` for a sample rate and channel count with
    :meth:`processor`."""

    def __init__(self, stages: Iterable[Any] = (), name: str = "chain", source: str = "chain", base_dir: str | None = None):
        problems: list[Problem] = []
        seen: set = set()
        specs = []
        if isinstance(stages, (dict, str, bytes)):
            raise ChainSpecError([Problem("", "stages must be a list of tables")], source)
        for i, raw in enumerate(stages):
            if isinstance(raw, StageSpec):
                raw = raw.to_dict()
            spec = _check_stage(raw, i, seen, base_dir, problems)
            if spec:
                specs.append(spec)
        if problems:
            raise ChainSpecError(problems, source)
        self.stages: list[StageSpec] = specs
        self.name = name
        self.source = source

    # -- constructors
    @classmethod
    def from_dict(cls, doc: dict, source: str = "chain", base_dir: str | None = None) -> "Chain":
        if not isinstance(doc, dict):
            raise ChainSpecError([Problem("", "a chain must be a table with [[stage]] entries")], source)
        problems = []
        for key in doc:
            if key not in TOP_KEYS:
                problems.append(Problem("", f"unknown top-level key {key!r}{did_you_mean(key, TOP_KEYS)}; allowed: {', '.join(TOP_KEYS)}"))
        stages = doc.get("stage", [])
        if not isinstance(stages, list):
            problems.append(Problem("", "'stage' must be an array of tables: write each stage under [[stage]]"))
            stages = []
        try:
            chain = cls(stages, name=str(doc.get("name", "chain")), source=source, base_dir=base_dir)
        except ChainSpecError as e:
            raise ChainSpecError(problems + e.problems, source) from None
        if problems:
            raise ChainSpecError(problems, source)
        return chain

    @classmethod
    def from_toml_string(cls, text: str, source: str = "chain", base_dir: str | None = None) -> "Chain":
        return cls.from_dict(parse_toml(text, source, ChainSpecError), source=source, base_dir=base_dir)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "Chain":
        path = os.fspath(path)
        text = read_utf8(path, "chain file", ChainSpecError)
        return cls.from_toml_string(text, source=path, base_dir=os.path.dirname(os.path.abspath(path)))

    @classmethod
    def load(cls, what: str) -> "Chain":
        """A chain by file path, or by the name of a bundled chain."""
        if os.path.exists(what) or what.endswith(".toml") or os.sep in what:
            return cls.from_toml(what)
        bundled = bundled_chains()
        if what in bundled:
            return cls.from_toml(bundled[what])
        raise ChainSpecError(
            [Problem("", f"no chain file {what!r} and no bundled chain of that name{did_you_mean(what, bundled)}; bundled: {', '.join(sorted(bundled))}")],
            what,
        )

    @classmethod
    def default(cls) -> "Chain":
        return cls.load("default")

    # -- use
    def to_dict(self) -> dict:
        return {"name": self.name, "stage": [s.to_dict() for s in self.stages]}

    def __repr__(self) -> str:
        return f"Chain({self.name!r}, stages=[{', '.join(f'{s.name}:{s.type}' for s in self.stages)}])"

    def needs_neural(self) -> bool:
        from quietcast.models import resolve_model

        return any(s.type == "denoise" and resolve_model(s.values.get("model", "default")) not in ("dsp", "passthrough") for s in self.stages)

    def processor(self, sample_rate: int = 48_000, channels: int = 1, device: str = "cpu") -> "ChainProcessor":
        """Build every stage; all build problems (a plugin that will not load,
        an unknown plugin parameter ...) are raised together. ``device``:
        where denoise stages run their model ("cpu", "cuda", "cuda:N",
        "auto"; a GPU that is missing or fails falls back to the CPU, which
        the stage's ``suppressor.backend`` says)."""
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        if not (SAMPLE_RATES[0] <= int(sample_rate) <= SAMPLE_RATES[1]):
            raise ValueError(f"sample_rate {sample_rate} is out of range [{SAMPLE_RATES[0]}, {SAMPLE_RATES[1]}] Hz")
        problems: list[Problem] = []
        built: list[Stage] = []
        latency = 0
        for spec in self.stages:
            try:
                st = build_stage(spec.type, spec.name, dict(spec.values), int(sample_rate), channels, dry_delay=latency,
                                 device=device)
            except (ParameterError, PluginLoadError, ValueError) as e:
                problems.append(Problem(f"stage {spec.name!r}", str(e)))
                continue
            except Exception as e:  # pedalboard may raise RuntimeError etc.
                problems.append(Problem(f"stage {spec.name!r}", f"{type(e).__name__}: {e}"))
                continue
            st.bypass = spec.bypass
            st._was_bypassed = spec.bypass
            latency += st.latency
            built.append(st)
        if problems:
            raise ChainSpecError(problems, self.source)
        return ChainProcessor(self, built, int(sample_rate), channels)

    def check(self, sample_rate: int = 48_000, channels: int = 1) -> None:
        """Build once to find problems that only building shows."""
        self.processor(sample_rate, channels)

    def process_array(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Process a whole ``[channels, frames]`` (or mono ``[frames]``)
        array; the result has the same shape, latency removed."""
        x = np.asarray(audio, dtype=np.float32)
        mono = x.ndim == 1
        if mono:
            x = x[None, :]
        proc = self.processor(sample_rate, x.shape[0])
        y = proc.process_aligned(x)
        return y[0] if mono else y


class ChainProcessor:
    """A running chain: :meth:`process` any block size, output delayed by
    :attr:`latency` samples; :meth:`set_param` by ``stage.param``.

    :attr:`latency` is fixed unless a live value lengthens a hosted
    plugin's latency beyond its stage's, in a stage that follows it
    (``live_latency = true``; elsewhere the stage's output shifts): it is then the new sum as soon as
    :meth:`set_param` returns, and the output moves to it, crossfaded,
    over the next block (:attr:`latency_changes` counts it). A shorter
    plugin latency is padded: nothing moves. After :meth:`fix_latency` a
    value that would lengthen it is refused."""

    def __init__(self, chain: Chain, stages: list[Stage], sample_rate: int, channels: int):
        self.chain = chain
        self.stages = stages
        self.sample_rate = sample_rate
        self.channels = channels
        self.latency = sum(s.latency for s in stages)
        self.bad_samples = 0
        #: input frames processed since the start (or the last reset)
        self.frames = 0
        #: stage -> (the input frame its faulting block started at, the frame of its first NaN/Inf sample in
        #: the latency-aligned output, or None when it raised): where a fault happened, in the input's time
        self.fault_at: dict[str, tuple[int, int | None]] = {}
        self._by_name = {s.name: s for s in stages}
        self._mix = [s for s in stages if isinstance(s, MixStage)]
        #: how many times :attr:`latency` moved live (a stage's latency grew)
        self.latency_changes = 0

    def stage(self, name: str) -> Stage:
        try:
            return self._by_name[name]
        except KeyError:
            raise ParameterError(name, f"no stage of that name{did_you_mean(name, self._by_name)}; stages: {', '.join(self._by_name) or 'none'}") from None

    def set_param(self, address: str, value: Any) -> Any:
        """``"nr.strength"`` -> set parameter ``strength`` of stage ``nr``."""
        if "." not in address:
            raise ParameterError(address, "address must be STAGE.PARAM, e.g. 'nr.strength'")
        sname, pname = address.split(".", 1)
        v = self.stage(sname).set_param(pname, value)
        self._follow_latency()
        return v

    def _follow_latency(self) -> None:
        """When a stage's latency moved (a hosted plugin whose latency a
        live value lengthened), :attr:`latency` becomes the new sum and each
        ``mix`` stage's delay of the chain input follows (crossfaded in the
        same block as the stage's own change)."""
        if sum(s.latency for s in self.stages) == self.latency:
            return
        acc = 0
        for s in self.stages:
            if isinstance(s, MixStage) and s.dry_delay != acc:
                s.set_dry_delay(acc)
            acc += s.latency
        self.latency = acc
        self.latency_changes += 1

    def fix_latency(self) -> None:
        """From now on no live value may lengthen this chain's latency (the
        daemon has declared it): one that would is refused, named, and a
        shorter one is padded (see :class:`~quietcast.bridge.stages.PluginStage`)."""
        for s in self.stages:
            if hasattr(s, "may_grow"):
                s.may_grow = False

    @property
    def faults(self) -> dict[str, str]:
        return {s.name: s.fault for s in self.stages if s.fault}

    def reset(self) -> None:
        for s in self.stages:
            s.reset()
        self.frames = 0
        self.fault_at = {}

    def fault_text(self, name: str, sample_rate: float | None = None, origin: int = 0) -> str:
        """Where stage ``name`` faulted, in words, for a message such as
        ``stage 'x' failed in the block starting at 1.37 s (returned NaN or
        Inf samples, the first at 1.52 s)``: ``in the block starting at T
        s`` (T: the block's first input frame, plus ``origin``), and the
        reason with, for NaN/Inf output, the time of the first bad sample in
        the latency-aligned output. A fault this processor did not see
        happen (before a reset) gives just the reason."""
        why = self._by_name[name].fault if name in self._by_name else None
        sr = sample_rate or self.sample_rate
        place = self.fault_at.get(name)
        if place is None:
            return f"({why})"
        start, sample = place
        first = "" if sample is None else f", the first at {(origin + sample) / sr:.2f} s"
        return f"in the block starting at {(origin + start) / sr:.2f} s ({why}{first})"

    def process(self, block: np.ndarray) -> np.ndarray:
        """Stream ``block[channels, frames]``; NaN/Inf input samples become 0
        (counted in :attr:`bad_samples`)."""
        from quietcast.models.base import sanitize

        x = np.asarray(block)
        if x.ndim != 2 or x.shape[0] != self.channels:
            raise ValueError(f"block must be shaped [channels={self.channels}, frames], got {tuple(x.shape)}")
        x, bad = sanitize(x)
        self.bad_samples += bad
        self._follow_latency()  # (a stage's own set_param, not ours, may have moved it)
        for m in self._mix:
            m.feed_chain_input(x)
        y = x
        start, lat = self.frames, 0
        for s in self.stages:
            was = s.fault
            y = s.process(y)
            lat += s.latency
            if s.fault is not None and was is None:
                # output frame k of stage s (delayed by the latency up to and including it) lands at input
                # time start + k - lat in the latency-aligned output; a sample of the latency fill, before it, at 0
                k = s.fault_frame
                self.fault_at[s.name] = (start, None if k is None else max(0, start + k - lat))
        self.frames += x.shape[1]
        self._follow_latency()  # (a plugin that moved its latency by itself: from the next block)
        return y

    def process_aligned(self, x: np.ndarray, block: int = 65_536) -> np.ndarray:
        """Process a whole array in blocks, then flush, and return exactly
        ``x.shape`` with the latency removed."""
        n = x.shape[1]
        L = self.latency
        out = np.empty((self.channels, n + L), np.float32)
        pos = 0
        for i in range(0, n, block):
            y = self.process(x[:, i:i + block])
            out[:, pos:pos + y.shape[1]] = y
            pos += y.shape[1]
        if L:
            out[:, pos:pos + L] = self.process(np.zeros((self.channels, L), np.float32))
        return out[:, L:]


def bundled_chains() -> dict[str, str]:
    """Name -> path of the chains shipped in quietcast/bridge/chains."""
    d = os.path.join(os.path.dirname(__file__), "chains")
    out = {}
    if os.path.isdir(d):
        for f in os.listdir(d):
            if f.endswith(".toml"):
                out[f[:-5]] = os.path.join(d, f)
    return out
