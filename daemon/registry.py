"""The parameter registry: one address per controllable value.

Addresses::

    CHANNEL.PARAM                 host.strength, guest.bypass, host.output_gain_db
    CHANNEL.chain.STAGE.PARAM     host.chain.comp.threshold_db, host.chain.verb.mix
                                  (every parameter of every post-chain stage and
                                  hosted plugin, plus STAGE.bypass)

Each address has a type, unit, range and default (channel parameters come
from the config schema, chain parameters from the stage or the plugin
itself). ZeroMQ, MIDI, the CLI, the state file and the config all go
through :meth:`Registry.set`, so an unknown address or an out-of-range
value is refused the same way everywhere: with the close matches, or the
allowed range, in the message.

Thread safety: :meth:`set` may be called from any thread (the control
thread, the MIDI dispatcher). Channel values reach the engine as one
immutable snapshot swap; chain values are queued and applied by the engine
thread at the start of its next hop, so a plugin is never touched from two
threads at once (a value of a plugin stage with ``live_latency``, which may
move the plugin's latency, is first foreseen on the supervisor thread, by an
instance of its own, several of one ``set`` together: :meth:`Registry._foresee`;
other values never wait for the supervisor). Listeners (:meth:`add_listener`) hear every change with
its source ("zmq", "midi", "state", "config", ...), which is how MIDI
feedback, ``event.param`` and the state file follow changes from
elsewhere.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Callable

from quietcast.bridge.errors import ParameterError, UnknownParameterError, did_you_mean
from quietcast.bridge.params import Param

from .config import GATE_PARAMS

log = logging.getLogger("quietcast.registry")

#: stage parameters set when a chain loads, never live (not listed; an
#: address of one is refused, named)
FIXED_STAGE_PARAMS = ("path", "plugin_name", "model")

#: live channel parameters (the rest of a channel's config needs a reload)
CHANNEL_PARAMS = ("strength", "input_gain_db", "output_gain_db", "background_db", "pause_db", "pause_threshold",
                  "bypass", "mute")

Listener = Callable[[str, Any, str], None]


def channel_param(name: str) -> Param:
    from .config import CHANNEL_KEYS

    for k in CHANNEL_KEYS:
        if k.name == name:
            return k.param
    raise KeyError(name)


class Registry:
    """Addresses -> values for a running daemon.

    Args:
        daemon: the :class:`~quietcast.daemon.service.Daemon` (the engine is
            looked up on every call: it is rebuilt when the sample rate
            changes).
    """

    def __init__(self, daemon):
        self.daemon = daemon
        self._listeners: list[Listener] = []
        self.pending: deque = deque()  # (channel index, stage, param, value) for the engine thread
        # chain values set live, re-applied when the engine is rebuilt
        self.chain_overrides: dict[str, Any] = {}
        self.refused = 0  # chain values a stage refused on the engine thread (logged, not kept)

    # ------------------------------------------------------------------
    # listeners

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def _notify(self, address: str, value: Any, source: str) -> None:
        for fn in list(self._listeners):
            try:
                fn(address, value, source)
            except Exception:  # a listener never breaks a set
                pass

    # ------------------------------------------------------------------
    # lookup

    @property
    def engine(self):
        eng = self.daemon.engine
        if eng is None:
            from .errors import NotReadyError

            raise NotReadyError("the engine is not running yet (waiting for the JACK server)")
        return eng

    def channels(self) -> list[str]:
        return [c.name for c in self.daemon.config.channels]

    def _channel_index(self, name: str, address: str) -> int:
        names = self.channels()
        if name not in names:
            raise UnknownParameterError(address, f"no channel {name!r}{did_you_mean(name, names)}; channels: {', '.join(names)}")
        return names.index(name)

    def resolve(self, address: Any) -> tuple[int, str | None, Param]:
        """``(channel index, stage or None, Param)`` for an address, or a
        ParameterError with the close matches."""
        if not isinstance(address, str) or not address:
            raise UnknownParameterError(str(address), "an address is a string like 'host.strength' or 'host.chain.comp.ratio'")
        parts = address.split(".")
        if len(parts) == 2:
            ch, name = parts
            i = self._channel_index(ch, address)
            if name not in CHANNEL_PARAMS:
                hint = did_you_mean(name, CHANNEL_PARAMS + ("chain",))
                raise UnknownParameterError(address, f"unknown parameter{hint}; channel parameters: {', '.join(CHANNEL_PARAMS)}"
                                              f", and chain stages under {ch}.chain.STAGE.PARAM")
            if name in GATE_PARAMS and self._gate_default(name) is None:
                raise UnknownParameterError(address, f"model {self.daemon.config.engine.model!r} has no pause gate "
                                              "(the shipped neural models do)")
            return i, None, channel_param(name)
        if len(parts) == 4 and parts[1] == "chain":
            ch, _, stage, name = parts
            i = self._channel_index(ch, address)
            proc = self.engine.chain(i)
            if proc is None:
                raise UnknownParameterError(address, f"channel {ch!r} has no post-chain")
            st = proc.stage(stage) if stage in proc._by_name else None
            if st is None:
                stages = list(proc._by_name)
                raise UnknownParameterError(address, f"no stage {stage!r}{did_you_mean(stage, stages)}; stages: {', '.join(stages)}")
            if name == "bypass":
                return i, stage, Param("bypass", "bool", False)
            if name in FIXED_STAGE_PARAMS and name in st.param_set:
                raise UnknownParameterError(address, f"{name} is not a live parameter: it is set when the chain "
                                                     "loads (edit the chain file and load it again)")
            why = st.lacks(name) if name in st.param_set else None
            if why:  # e.g. a denoise stage's pause gate with the dsp model
                raise UnknownParameterError(address, why)
            return i, stage, st.param_set.get(name, f"{ch}.chain.{stage}")
        raise UnknownParameterError(address, "an address is CHANNEL.PARAM or CHANNEL.chain.STAGE.PARAM"
                                      f"{did_you_mean(address, self.addresses())}")

    def addresses(self) -> list[str]:
        return [d["address"] for d in self.list()]

    # ------------------------------------------------------------------
    # the three operations

    def list(self, prefix: str = "") -> list[dict]:
        """Every address (under ``prefix``) with type, unit, range, default
        and current value."""
        out = []
        eng = self.daemon.engine
        gate = self._gate_default("pause_db") is not None
        for i, ch in enumerate(self.channels()):
            for name in CHANNEL_PARAMS:
                if name in GATE_PARAMS and not gate:
                    continue
                p = channel_param(name)
                d = self._describe(f"{ch}.{name}", p, self._channel_value(i, name))
                if name in GATE_PARAMS and self._follows_engine(i, name):
                    d["follows_engine"] = True  # value is the engine's, and moves with it
                out.append(d)
            proc = eng.chain(i) if eng is not None else None
            if proc is None:
                continue
            for st in proc.stages:
                out.append(self._describe(f"{ch}.chain.{st.name}.bypass", Param("bypass", "bool", False), st.bypass))
                for p in st.param_set:
                    if p.kind in ("dict",) or p.name in FIXED_STAGE_PARAMS or st.lacks(p.name):
                        continue
                    out.append(self._describe(f"{ch}.chain.{st.name}.{p.name}", p, st.values.get(p.name, p.default)))
        if prefix:
            out = [d for d in out if d["address"] == prefix or d["address"].startswith(prefix.rstrip(".") + ".")]
        return out

    @staticmethod
    def _describe(address: str, p: Param, value: Any) -> dict:
        d = p.describe()
        d.pop("name", None)
        return {"address": address, **d, "value": value}

    def _gate_default(self, name: str) -> float | None:
        """The pause gate's ``name`` (a :data:`GATE_PARAMS`) of a channel
        that sets none, or None when the model has no pause gate (or no
        engine runs yet)."""
        eng = self.daemon.engine
        return None if eng is None else getattr(eng, "gate_defaults", {}).get(name)

    def _follows_engine(self, i: int, name: str) -> bool:
        """Channel ``i`` sets no ``name`` of its own (null)."""
        eng = self.daemon.engine
        return getattr(eng.params[i] if eng is not None else self.daemon.config.channels[i], name) is None

    def _channel_value(self, i: int, name: str) -> Any:
        eng = self.daemon.engine
        v = getattr(eng.params[i], name) if eng is not None else getattr(self.daemon.config.channels[i], name)
        if name in GATE_PARAMS and v is None:  # the engine's
            v = self._gate_default(name)
        return v

    def get(self, address: str) -> Any:
        i, stage, p = self.resolve(address)
        if stage is None:
            return self._channel_value(i, p.name)
        st = self.engine.chain(i).stage(stage)
        if p.name == "bypass":
            return st.bypass
        return self.chain_overrides.get(address, st.values.get(p.name, p.default))

    @staticmethod
    def _to_engine_value(stage: str | None, p: Param, value: Any) -> bool:
        """``CHANNEL.pause_db`` or ``CHANNEL.pause_threshold`` set to
        ``None``: back to the engine's value."""
        return stage is None and p.name in GATE_PARAMS and value is None

    def check(self, address: str, value: Any) -> None:
        """Raise what :meth:`set` would for this address and value, and
        change nothing (``None`` is allowed for ``CHANNEL.pause_db`` and
        ``CHANNEL.pause_threshold``: back to the engine's value)."""
        i, stage, p = self.resolve(address)
        if not self._to_engine_value(stage, p, value):
            v = p.check(value, address.rsplit(".", 1)[0])
            if stage is not None:  # (a value that would lengthen a plugin's declared latency is refused)
                self._foresee({(i, stage): {p.name: v}}, keep=False)

    def set(self, address: str, value: Any, source: str = "api", _foreseen: bool = False) -> Any:
        """Check ``value`` against the address's range and apply it.
        Returns the stored value. Raises ParameterError (a ValueError)."""
        i, stage, p = self.resolve(address)
        if self._to_engine_value(stage, p, value):
            self.engine.set_params(self.channels()[i], **{p.name: None})
            v = self._gate_default(p.name)
            self._notify(address, v, source)
            return v
        v = p.check(value, address.rsplit(".", 1)[0])
        if isinstance(v, float) and math.isinf(v) and not p.allow_neg_inf:  # pragma: no cover - Param refuses
            raise ParameterError(address, f"value {v} is out of range {p.range_text()}")
        if stage is None:
            self.engine.set_params(self.channels()[i], **{p.name: v})
        else:
            if not _foreseen:
                self._foresee({(i, stage): {p.name: v}})
            self.chain_overrides[address] = v
            self.pending.append((i, stage, p.name, v))
        self._notify(address, v, source)
        return v

    def set_many(self, values: dict[str, Any], source: str = "api") -> dict[str, Any]:
        """Check every ``address -> value`` first (nothing is applied when
        one is refused), then apply them in order; returns the stored
        values. The values of one stage that follows its plugin's latency
        live (``live_latency``) are foreseen together, as they are applied:
        two that move the latency are judged by the latency they bring
        together, not one by one."""
        groups: dict[tuple[int, str], dict[str, Any]] = {}
        for a, v in values.items():
            i, stage, p = self.resolve(a)
            if self._to_engine_value(stage, p, v):
                continue
            v = p.check(v, a.rsplit(".", 1)[0])
            if stage is not None:
                groups.setdefault((i, stage), {})[p.name] = v
        self._foresee(groups)
        return {a: self.set(a, v, source=source, _foreseen=True) for a, v in values.items()}

    #: how long :meth:`set` waits for the supervisor to foresee a hosted plugin's latency
    FORESEE_TIMEOUT_S = 1.0

    def _foresee(self, groups: dict[tuple[int, str], dict[str, Any]], keep: bool = True) -> None:
        """Chain values (``(channel, stage) -> {name: value}``) of a stage
        that follows its hosted plugin's latency live (``live_latency``;
        any of its plugin's parameters: it may move the latency) are first
        asked of the stage's prober instance on the supervisor thread,
        JUCE's message thread (on the engine thread a plugin's new latency
        is not seen), each stage's values together, in one round trip: the
        stage then knows the latency they bring before it takes them, and
        values that would lengthen the latency the daemon declared are
        refused here, named, with nothing changed (``keep``: for the sets
        that follow; else a check only). Other stages' values (a plugin
        stage without ``live_latency`` too) never wait for the supervisor."""
        asks = []
        for (i, stage), vals in groups.items():
            proc = self.engine.chain(i)
            st = proc.stage(stage) if proc is not None else None
            vals = {k: v for k, v in vals.items() if st is not None and getattr(st, "needs_foresight", None)
                    and st.needs_foresight(k)}
            if vals:
                asks.append((f"{self.channels()[i]}.chain.{stage}", st, vals))
        if not asks:
            return
        from .errors import ControlError

        def fn():
            told = []
            for prefix, st, vals in asks:
                try:
                    told.append(st.foretell(vals))
                except ParameterError as e:  # named by the address the caller gave, not the stage's own name
                    name = e.address.removeprefix(f"{st.name}.")
                    raise ParameterError(f"{prefix}.{name}", str(e).removeprefix(f"{e.address}: ")) from None
            if keep:  # (all or none)
                for (_, st, vals), (lat, swap) in zip(asks, told):
                    st.remember(vals, lat, swap)

        call = getattr(self.daemon, "call_in_main", None)
        try:
            call(fn, timeout=self.FORESEE_TIMEOUT_S) if call is not None else fn()
        except ControlError as e:  # the supervisor did not answer (a frozen jackd): refused like a bad value
            prefix, _, vals = asks[0]
            name, v = next(iter(vals.items()))
            shown = f"{v:g}" if isinstance(v, float) else repr(v)
            raise ParameterError(f"{prefix}.{name}", f"cannot tell now what latency the plugin would have with "
                                                     f"{shown}: {e.message}") from None

    # ------------------------------------------------------------------
    # engine side

    def apply_pending(self, engine) -> None:
        """Called by the engine thread at the start of a hop."""
        while self.pending:
            item = self.pending.popleft()
            if callable(item):  # a job for the engine thread (e.g. a chain swap)
                try:
                    item(engine)
                except Exception:
                    pass
                continue
            i, stage, name, v = item
            proc = engine.chain(i)
            if proc is not None:
                try:
                    proc.stage(stage).set_param(name, v)
                except Exception as e:  # checked already; a plugin may still refuse
                    address = f"{self.channels()[i]}.chain.{stage}.{name}"
                    if self.chain_overrides.get(address) == v:  # not what runs: not saved, not re-applied
                        del self.chain_overrides[address]
                    self.refused += 1
                    log.warning("%s = %r was refused by the stage and not applied: %s", address, v, e)
                    # listeners (event.param, MIDI feedback, the state file) hear the value that runs
                    self._notify(address, self.get(address), "refused")

    def reapply(self, engine) -> None:
        """After an engine rebuild: put live chain values back."""
        for i, proc in enumerate(engine.chains):
            if proc is not None:
                self.reapply_to(i, proc)

    def reapply_to(self, i: int, proc) -> None:
        """Put channel ``i``'s live chain values into chain processor
        ``proc`` (a new chain for it); a value the new chain has no place
        for is dropped."""
        ch = self.channels()[i]
        for address, v in list(self.chain_overrides.items()):
            c, _, stage, name = address.split(".")
            if c != ch:
                continue
            try:
                proc.stage(stage).set_param(name, v)
            except Exception:
                del self.chain_overrides[address]
