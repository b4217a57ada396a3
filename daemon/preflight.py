"""What ``quietcast run`` checks before it starts, without a JACK server.

:func:`startup_problems` is shared by ``quietcast run`` (which refuses to
start on any problem but the MIDI mapping's) and ``quietcast config
check`` (which reports them all, the MIDI mapping's included: with a
broken mapping the daemon runs, but without MIDI control). Checks, in
order:

- the control endpoints (:func:`quietcast.daemon.control.endpoint_problems`:
  a non-loopback bind without CURVE keys, a missing or wrong key file);
- each channel's chain, built once at 48 kHz (a plugin that will not load);
- the engine, built once at 48 kHz (on the CPU for ``config check``, on
  ``[engine] device`` for ``run``) around those built chains: the model
  and the settings it must have (``pause_db`` and ``pause_threshold``, in
  ``[engine]`` or a channel, and ``[engine] pitch_filter`` with the
  ``dsp`` model, which has neither a pause gate nor a pitch filter);
- the MIDI mapping file (``[midi] mapping``, or ``midi.toml`` in the state
  directory), against that engine's parameters as the daemon checks it.

Each problem is a :class:`~quietcast.bridge.errors.Problem` naming the key
the user wrote (``[engine] pause_db``, ``[channel 'host'] pause_db``,
``[control] bind`` ...).

Each chain is built once, and the engine takes that build: hosted plugins
and denoise stages (a model load, a latency probe each) are the slow part
of a start. ``quietcast run`` hands the engine it checked
(:func:`startup_check`) to the daemon, which runs it when the JACK server
runs at the rate it was built for (48 kHz): the time from a (re)start to
audio is one build, not three.
"""

from __future__ import annotations

import types
from typing import Any

from quietcast.bridge.errors import ChainSpecError, ParameterError, Problem

from .config import Config
from .registry import CHANNEL_PARAMS

__all__ = ["startup_check", "startup_problems", "channel_specs", "chain_processors", "engine_problems",
           "midi_mapping_problems"]

#: the rate the engine and chains are built at for a check (the server's is not known)
CHECK_RATE = 48_000


def channel_specs(config: Config, chains: dict | None = None, live: dict | None = None,
                  processors: dict | None = None) -> list[Any]:
    """The channel objects an :class:`~quietcast.daemon.engine.Engine` is
    built from: each channel's name, stems, live parameters and chain
    (``chains``: channel -> a bridge Chain or None, in place of the
    config's; ``live``: channel -> {parameter: value} that win over the
    config's; ``processors``: channel -> its chain built already
    (:func:`chain_processors`), which the engine takes instead of building
    it again)."""
    out = []
    for c in config.channels:
        s = types.SimpleNamespace(name=c.name, stems=c.stems, **{k: getattr(c, k) for k in CHANNEL_PARAMS})
        for k, v in (live or {}).get(c.name, {}).items():
            setattr(s, k, v)
        s.chain = (chains or {}).get(c.name, c.chain_spec)
        s.processor = (processors or {}).get(c.name)
        out.append(s)
    return out


def chain_processors(config: Config, sample_rate: int = CHECK_RATE) -> tuple[dict[str, Any], list[Problem]]:
    """Build each channel's chain once (mono): ``(channel -> its
    processor, problems)``. Plugins that will not load, plugin parameters
    ... only show up when building."""
    built: dict[str, Any] = {}
    problems: list[Problem] = []
    for ch in config.channels:
        if ch.chain_spec is None:
            continue
        try:
            built[ch.name] = ch.chain_spec.processor(sample_rate, 1)
        except ChainSpecError as e:
            problems += [Problem(f"[channel {ch.name!r}] chain", f"{e.source}: {p}") for p in e.problems]
        except Exception as e:  # a chain build may raise anything pedalboard raises
            problems.append(Problem(f"[channel {ch.name!r}] chain", f"{type(e).__name__}: {e}"))
    return built, problems


def _engine_problem(config: Config, err: Exception) -> Problem:
    """A refusal of the engine as a problem naming the key the user wrote."""
    if isinstance(err, ParameterError):
        msg = str(err).removeprefix(f"{err.address}: ")
        if err.address.startswith("[engine] "):
            return Problem(err.address, msg)
        ch, _, key = err.address.partition(".")
        if key and ch in config.channel_names:
            return Problem(f"[channel {ch!r}] {key}", msg)
    if isinstance(err, ChainSpecError):
        return Problem("[engine]", str(err))
    return Problem("[engine]", f"{err}" if isinstance(err, ValueError) else f"{type(err).__name__}: {err}")


def engine_problems(config: Config, processors: dict | None = None, device: str = "cpu") -> tuple[Any, list[Problem]]:
    """Build the engine once (48 kHz, its suppressor on ``device``):
    ``(engine or None, problems)``. ``processors``: the channels' chains
    built already at 48 kHz (:func:`chain_processors`), which it runs
    (each chain not among them is built)."""
    from .engine import Engine

    e = config.engine
    try:
        eng = Engine(channel_specs(config, processors=processors), CHECK_RATE, model=e.model,
                     max_attenuation_db=e.max_attenuation_db, safety_ms=e.safety_ms, max_backlog_ms=e.max_backlog_ms,
                     device=device, pitch_filter=e.pitch_filter, pause_db=e.pause_db,
                     pause_threshold=e.pause_threshold)
    except Exception as err:  # a model that will not load, a setting it lacks ...
        return None, [_engine_problem(config, err)]
    return eng, []


def midi_mapping_problems(config: Config, engine: Any = None) -> list[Problem]:
    """The MIDI mapping file's problems, its addresses checked against
    ``engine``'s parameters (as the daemon does) when it is given."""
    from .midi import MidiMapError, load_mapping, mapping_path
    from .registry import Registry

    if not config.midi.enabled:
        return []
    path = mapping_path(config)
    registry = None
    if engine is not None:
        registry = Registry(types.SimpleNamespace(config=config, engine=engine))
    try:
        load_mapping(path, registry)
    except MidiMapError as e:
        return [Problem("[midi] mapping", f"{e.source}: {p}") for p in e.problems]
    return []


def startup_check(config: Config, midi: bool = True, device: str = "cpu") -> tuple[Any, list[Problem]]:
    """Every problem ``quietcast run`` would stop at before starting (see
    the module's docstring), and the engine built to find them:
    ``(engine or None, problems)``. With ``midi`` also the MIDI mapping's
    problems (which the daemon runs without: MIDI control stays off until
    it is fixed and the config reloaded). ``device``: where the engine's
    suppressor is built (``run`` gives ``[engine] device``: the engine is
    the one it runs, see :class:`~quietcast.daemon.service.Daemon`)."""
    problems: list[Problem] = []
    if config.control.enabled:
        from .control import endpoint_problems

        problems += endpoint_problems(config.control)
    built, chain_problems = chain_processors(config, CHECK_RATE)
    problems += chain_problems
    engine = None
    if not chain_problems:  # (a chain that does not build would only be refused again)
        engine, probs = engine_problems(config, built, device)
        problems += probs
    if midi:
        problems += midi_mapping_problems(config, engine)
    return engine, problems


def startup_problems(config: Config, midi: bool = True) -> list[Problem]:
    """The problems of :func:`startup_check` (its engine built on the CPU,
    then dropped)."""
    return startup_check(config, midi)[1]
