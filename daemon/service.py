"""The daemon's lifecycle: connect to JACK, run the engine, serve control,
survive jackd going away, stop cleanly.

Threads:

- the supervisor (:meth:`Daemon.run`, the main thread under ``quietcast
  run``): builds the engine (hosted plugins must be loaded on the thread
  that loaded the first one; at a start it runs the one ``quietcast
  run``'s check built on this thread, when the server's rate is 48 kHz),
  opens the JACK client, applies connection
  rules when ports appear, follows the connections made to its ports by
  hand and makes them again (:meth:`Daemon._follow_connections`: after a
  reopen, a jackd crash, a restart, or when the other port comes back),
  reconnects when the server comes back, runs
  jobs other threads post with :meth:`Daemon.call_in_main` (load_chain,
  reload), handles stop requests.
- engine thread (:meth:`Engine.run`): processes hops.
- control thread (control.py): ZeroMQ commands and events; its worker
  thread answers the commands that wait for the supervisor.
- MIDI dispatcher (midi.py), state saver timers.
- JACK's own threads: the process callback (copies only) and the
  notification thread (callbacks that only set events or bump counters).

Start-up order: control socket, JACK (waits for the server), state
restore, MIDI; shutdown runs in reverse inside ``finally``. Signals only
set flags; a second SIGINT forces an immediate exit.
"""

from __future__ import annotations

import concurrent.futures
import gc
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable

import numpy as np

from quietcast.bridge.errors import ChainSpecError, ParameterError
from quietcast.models import available_models, bundle_licence

from . import jackio
from .engine import Engine
from .errors import ControlError, NotReadyError
from .config import GATE_PARAMS
from .registry import CHANNEL_PARAMS

log = logging.getLogger("quietcast")

_MISSING = object()  # a value a stage spec does not give
#: connections remembered at most (those waiting longest for their other port go first)
MAX_REMEMBERED = 1024


def _refused(e, where: str = "") -> ControlError:
    """A checked file's error (ConfigError, ChainSpecError: each with its
    ``problems``) as the ``failed`` reply that lists them."""
    return ControlError("failed", f"{where}{e}", {"problems": [str(p) for p in e.problems]})


def settle_heap() -> float:
    """Collect the garbage, then freeze what is left (``gc.freeze``); returns
    the milliseconds it took (kept in ``Daemon.heap_settle_ms``, logged at
    debug level). Called when a new engine is built, before its audio runs
    (the first connection, a rebuild, a new sample rate; a reconnect that
    keeps the engine needs none: its closed client frees itself,
    ``JackIO.close``).

    Why: a full cycle collection walks every tracked object, and a process
    with torch and a neural model loaded has about 170,000 of them: about
    85 ms on a 2-core VM. Any thread may trigger one, and it holds the GIL
    throughout, so the engine thread stalls for several times its safety
    margin (a late hop: the dry path for a moment), and so does every
    Python JACK callback (the demo's player and recorder took 20-40 xruns
    per run from it). Frozen objects are never walked again, so later
    collections see only what was made since. Unfreezing first lets
    whatever died since the last call (an old engine) be collected, not
    kept frozen forever."""
    t0 = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return 1000.0 * (time.perf_counter() - t0)


class Daemon:
    """Runs one configured set of channels in the JACK graph.

    Args:
        config: a loaded daemon config (quietcast.daemon.config.Config).
        server: overrides ``config.jack.server`` when given.
        chains: channel name -> bridge Chain (else each channel's config).
        engine_options: extra Engine keyword arguments (test hooks).
        engine: an engine built already from this config (``quietcast
            run``'s check, :func:`.preflight.startup_check`), on the thread
            that will call :meth:`run` (hosted plugins are loaded on one
            thread): the first connection runs it when the JACK server's
            rate is its rate, instead of building the same again (plugins,
            models: the slow part of a start); else it is dropped.
    """

    def __init__(self, config: Any, server: str | None = None, chains: dict | None = None,
                 engine_options: dict | None = None, engine: Engine | None = None):
        from .registry import Registry

        self.config = config
        self.server = server if server is not None else config.jack.server
        self.chains: dict = dict(chains or {})
        #: channel -> what ``load_chain`` was given (a chain file's absolute path, a bundled name, or
        #: "" for none): saved in the state file, loaded again at the next start
        self.loaded_chains: dict[str, str] = {}
        self.engine_options = engine_options or {}
        self.io: jackio.JackIO | None = None
        self.engine: Engine | None = None
        self.registry = Registry(self)
        self.control = None
        self.midi = None
        #: why MIDI control is not running although [midi] enabled (a broken mapping file ...), or None
        self.midi_problem: str | None = None
        self._midi_lock = threading.Lock()  # one start at a time (the first start, a reload)
        self._midi_set = threading.Lock()  # self.midi is set, or the started one stopped, against the shutdown
        self.state = None
        self._engine_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self.ready = threading.Event()  # audio flows and connections are made
        self.reconnects = 0
        self.last_reconnect_s: float | None = None
        self._down_since: float | None = None
        self._sigint = 0
        self._finished = threading.Event()  # run() has returned (a stop finished)
        self._seen_cycles = -1  # the client's cycle counter when the supervisor last saw it move
        self._cycles_seen_at = 0.0  # (monotonic)
        #: since when (monotonic) the JACK server has run no cycle of a connected client, or None
        self._stalled_since: float | None = None
        # while stalled: is the server still there, and does it still know this client? (a probe
        # client in a thread of its own: against a frozen server it waits as long as the server)
        self._probe_thread: threading.Thread | None = None
        self._probe_at = 0.0
        self._probe_lost = threading.Event()
        self._restored = False
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        #: set when a job is posted or a stop asked for: the supervisor's wait between rounds ends at once
        self._wake = threading.Event()
        self._supervisor: int | None = None
        self.on_ready: list[Callable[["Daemon"], None]] = []
        from .notify import Notifier

        self.notifier = Notifier()
        self._last_ping = 0.0
        self._ping_hops = -1
        self._last_status = 0.0
        self.faults: dict[str, str] = {}
        self._totals = {"cycles": 0, "xruns": 0, "deadline_misses": 0, "missed_frames": 0}
        self._bad_before = 0  # NaN/Inf input samples counted by engines since replaced
        self._bad_lock = threading.Lock()  # the total and the engine change together
        self._kept_connections: list[tuple[str, str]] = []  # to make again after a reopen
        #: PIPEWIRE_LATENCY as the daemon found it ("" none; None: not looked at yet): _ask_pipewire_quantum
        self._pw_latency_env: str | None = None
        #: the connections of our ports (by hand or by rule), as last seen: made again when the
        #: server comes back (a jackd crash), when the other port comes back (a player restarted),
        #: and at the next start (saved in the state file); one taken down while both ports exist
        #: is forgotten (see :meth:`_follow_connections`)
        self._remembered: dict[tuple[str, str], None] = {}
        self._conn_due: float | None = None  # when to look at the connections after a change
        #: connections the rules asked for, in this run (any config's): the rules' business, never
        #: remembered (a rule taken out of the config must not live on in the state file)
        self._rule_pairs: set[tuple[str, str]] = set()
        #: the JACK MIDI ports' remembered connections while no MidiControl runs (from the state file,
        #: or from the one a [midi] reload stopped): handed to the next one
        self._midi_connections: list = []
        self._reload_edits: set[tuple[str, str]] = set()  # (channel, param) a reloaded file changed
        #: the engine a reload built before re-opening, or the one given (the start-up check's): the next
        #: open runs it at its rate (:meth:`_engine_for`)
        self._prebuilt: Engine | None = engine
        self._prebuilt_on = threading.get_ident()  # (the thread the given one was handed over on)
        self._name_warned = False  # said once that the JACK client name is taken

    # ------------------------------------------------------------------
    # engine

    def _channel_specs(self, live_gate: bool = True):
        """The channels for a new engine (:func:`.preflight.channel_specs`):
        the config's, with the chains ``load_chain`` put on them and the
        live values of the running engine (they survive a rebuild, but not
        what a reloaded file changed); ``live_gate`` False leaves out the
        live pause-gate values (a new model without the gate)."""
        from .preflight import channel_specs

        live = {n: {k: v for k, v in p.__dict__.items()
                    if (n, k) not in self._reload_edits and (live_gate or k not in GATE_PARAMS)}
                for n, p in zip(self.engine.names, self.engine.params)} if self.engine else {}
        return channel_specs(self.config, self.chains, live)

    def _new_engine(self, sample_rate: int) -> Engine:
        e = self.config.engine

        def build(specs):
            return Engine(specs, sample_rate, model=e.model, max_attenuation_db=e.max_attenuation_db,
                          safety_ms=e.safety_ms, max_backlog_ms=e.max_backlog_ms, device=e.device,
                          pitch_filter=e.pitch_filter, pause_db=e.pause_db, pause_threshold=e.pause_threshold,
                          **self.engine_options)

        try:
            return build(self._channel_specs())
        except ParameterError as err:
            # a pause-gate value set live for the old model, which the new one lacks: dropped (the
            # config's own values still have to fit, and are refused with the reason)
            if not self.engine or err.address.rsplit(".", 1)[-1] not in GATE_PARAMS:
                raise
            log.warning("live pause-gate values dropped: model %s has no pause gate", e.model)
            return build(self._channel_specs(live_gate=False))

    #: how long the last :func:`settle_heap` took (ms; None before the first engine)
    heap_settle_ms: float | None = None

    def _engine_for(self, sample_rate: int) -> Engine:
        eng = self.engine
        if eng is None or eng.sample_rate != sample_rate or getattr(self, "_rebuild", False):
            e = self.config.engine
            pre, self._prebuilt = self._prebuilt, None  # one a reload or the start-up check built (and checked)
            if pre is not None and pre.sample_rate != sample_rate:
                log.debug("the engine built at %d Hz is built again for the server's %d Hz", pre.sample_rate,
                          sample_rate)
                pre = None  # (not kept alive through the build of the new one)
            new = pre if pre is not None else self._new_engine(sample_rate)
            self._reload_edits = set()  # taken in: from now on the live values are the engine's
            old_bad = eng.stats.bad_samples if eng is not None else 0  # (its thread has stopped: final)
            eng = None  # the old engine (and the client it holds) is not kept alive through settle_heap
            new.registry = self.registry
            self.registry.reapply(new)
            new.plan_latency()  # (a live value may have lengthened a plugin's latency) before it is declared
            with self._bad_lock:  # the old engine's count joins the daemon's total as the engine changes
                self._bad_before += old_bad
                self.engine = new
            self._rebuild = False
            self.heap_settle_ms = settle_heap()
            log.debug("heap collected and frozen in %.1f ms", self.heap_settle_ms)
            pf = new.sup.values.get("pitch_filter")
            pg = new.sup.values.get("pause_db")
            log.info("engine: %d channel(s) at %d Hz, model %s on %s (strength 1.0 = %g dB%s%s), processing latency "
                     "%d frames", new.n, sample_rate, new.model, new.backend, new.max_attenuation_db,
                     "" if pf is None else f", pitch filter {pf:g}", "" if pg is None else f", pause gate {pg:g} dB below {new.sup.values['pause_threshold']:g}",
                     new.processing_latency)
            lic = bundle_licence(new.sup.suppressor)
            if lic and not lic.get("commercial_use", True) and not getattr(self, "_licence_warned", False):
                self._licence_warned = True
                log.warning("model %s (%s): %s (%s)%s", e.model, new.sup.suppressor.bundle.path.name,
                            lic.get("note", ""), "; ".join(lic.get("reasons", [])),
                            "; engine.model = \"neural-clean\" allows commercial use"
                            if "neural-clean" in available_models() else "")
        return self.engine

    # ------------------------------------------------------------------
    # connecting

    def _try_open(self, quiet: bool = False) -> bool:
        """Open the JACK client and start the engine on it; False while the
        server is not there (or the client name is taken). ``quiet``: the
        attempt after the first of a wait, whose libjack messages (five
        lines on stderr each time) are dropped (:class:`jackio.libjack_quiet`,
        a C function: safe on libjack's real-time thread too)."""
        import contextlib

        import jack

        cfg = self.config
        self._ask_pipewire_quantum()
        io = jackio.JackIO(cfg.jack.client_name, self.server, [c.name for c in cfg.channels],
                           [c.stems for c in cfg.channels], latency=lambda period: 0)

        def latency_for(period: int) -> int:
            eng = self._engine_for(io.sample_rate)
            eng.publish_dry_gains(io)  # before the client runs: a muted channel is silent from its first cycle
            return eng.latency_for_period(period)

        io._latency_for = latency_for
        failed = taken = None
        with jackio.libjack_quiet() if quiet else contextlib.nullcontext():
            try:
                io.open()
            except (jack.JackError, OSError) as e:
                failed = e
                # (not probed once a stop is asked for: against a frozen server the probe waits too)
                taken = (isinstance(e, jack.JackOpenError) and not self._stop.is_set()
                         and self._name_taken(cfg.jack.client_name))
        if failed is not None:
            if taken:
                if not self._name_warned:
                    self._name_warned = True
                    log.warning("JACK client name %r is taken by another client (another quietcast daemon?); "
                                "trying again every %g s", cfg.jack.client_name, cfg.jack.reconnect_interval_ms / 1000)
            else:
                log.debug("JACK not available: %s", failed)
            return False
        self._name_warned = False
        self.io = io
        self._seen_cycles, self._cycles_seen_at, self._stalled_since = -1, time.monotonic(), None
        eng = self.engine
        eng.reset_state()  # a reused engine holds the last audio before the outage: it must not play again
        eng.attach(io)
        io.on_period = eng.change_period  # (a period change: moved in place, in the buffer-size callback)
        self._engine_thread = threading.Thread(target=eng.run, name="quietcast-engine", daemon=True)
        self._engine_thread.start()
        self._apply_rules(restore=False)
        kept, self._kept_connections = self._kept_connections, []
        # (with the ports' connections just before a reopen: a sample-rate change, a rebuild)
        self._remembered = dict.fromkeys([*self._remembered, *kept])
        self._restore_remembered("restored %d connection(s) the ports had before")
        self._follow_connections()  # (what no longer fits the ports, e.g. a renamed channel's, goes)
        log.info("connected to JACK%s (%s): %d Hz, period %d, latency %d frames (%.1f ms)",
                 f" server {self.server!r}" if self.server else "", jackio.libjack_version() or "libjack",
                 io.sample_rate, io.period, io.latency, 1000.0 * io.latency / io.sample_rate)
        return True

    def _ports_on_server(self, name: str) -> list | None:
        """The ports of a client called ``name`` as the server lists them
        to a probe client of its own, or None when no server answers
        (jack.JackError when it fails to list them)."""
        import jack

        try:
            probe = jack.Client("quietcast-probe", servername=self.server, no_start_server=True)
        except jack.JackError:
            return None
        try:
            return probe.get_ports(jackio.ports_of(name))
        finally:
            try:
                probe.close()
            except jack.JackError:
                pass

    def _name_taken(self, name: str) -> bool:
        """Whether the server runs and a client called ``name`` has ports
        there (JACK2 answers an exact name that is taken with a plain
        failure, not with its "name not unique" status)."""
        import jack

        try:
            return bool(self._ports_on_server(name))
        except jack.JackError:
            return False

    def _close_io(self) -> None:
        self._stalled_since = None  # (a stalled server that went away: now it is a reconnect)
        if self.engine is not None:
            self.engine.stop()
        if self._engine_thread is not None:
            self._engine_thread.join(timeout=5)
            self._engine_thread = None
        if self.io is not None:
            c = self.io.counters  # the counters restart with every client: keep totals
            for k in self._totals:
                self._totals[k] += int(c[getattr(jackio, k.upper())])
            self.io.close()
            self.io = None
            gc.collect()  # the old rings go now, not at some later cycle collection

    def _reopen(self) -> None:
        """Rebuild the engine and re-open the client (a short dropout); its
        ports' connections are made again."""
        if self.io is not None:
            self._kept_connections = self.io.connections()
        self._close_io()
        self._rebuild = True
        self.ready.clear()
        if self._try_open():
            self.ready.set()
            self.emit("event.state", {"state": "ready", "latency_frames": self.io.latency})

    def _apply_rules(self, restore: bool = True) -> None:
        """Connect by rule; with ``restore``, also make the remembered
        connections whose ports are both there again."""
        io = self.io
        if io is None:
            return
        io.ports_changed.clear()
        try:
            made = io.apply_rules([c.connect_in for c in self.config.channels],
                                  [c.connect_out for c in self.config.channels])
        except Exception as e:  # the supervisor must outlive a JACK hiccup; the next port change retries
            log.warning("connecting ports by rule failed: %s", e)
            return
        if made:
            log.info("connected %d port(s) by rule", made)
        if not restore:
            return
        if self._conn_due is not None:  # (a change not looked at yet: a connection taken down is not made again)
            self._follow_connections()
        self._restore_remembered("made %d remembered connection(s) again (their other port is back)")

    def _follow_connections(self) -> None:
        """Bring :attr:`_remembered` up to date with the server: every
        connection of our ports that no rule asked for is remembered; a
        remembered one that is gone while both its ports stayed was taken
        down (by hand, or by the other client) and is forgotten; one whose
        other port is gone, or went and came back since the last look (a
        player restarted: ``io.gone_ports``), waits for it and is made
        again. One of our own ports that no longer exists (a channel renamed
        or removed, another client name) takes its connections with it; at
        most :data:`MAX_REMEMBERED` are kept."""
        self._conn_due = None
        io = self.io
        if io is None:
            return
        cur = io.connections(strict=True)
        names = io.port_names()
        if cur is None or names is None:  # the server does not answer: looked at again after the next change
            return
        me = io.client_name + ":"
        now = set(cur)
        gone = set()
        while True:  # ports unregistered since the last look (they may be back already)
            try:
                gone.add(io.gone_ports.popleft())
            except IndexError:
                break
        self._rule_pairs |= io.rule_pairs

        def keep(a: str, b: str) -> bool:
            own = a if a.startswith(me) else b if b.startswith(me) else None  # (another client name's: gone)
            if own is None or own not in names or (a, b) in self._rule_pairs:
                return False
            # connected; or waiting for its other port; or that port went (and came back) since the last
            # look, taking the connection with it: only one taken down while both ports stayed is forgotten
            return (a, b) in now or a not in names or b not in names or a in gone or b in gone

        pairs = [p for p in dict.fromkeys([*self._remembered, *cur]) if keep(*p)]
        kept = dict.fromkeys(pairs[-MAX_REMEMBERED:])  # (the oldest go first: ports that never came back)
        if kept != self._remembered:
            self._remembered = kept  # (replaced, never changed in place: the state saver reads it)
            if self.state is not None:
                self.state.changed()

    def _restore_remembered(self, what: str) -> None:
        io = self.io
        if io is None or not self._remembered:
            return
        try:
            made = io.restore(list(self._remembered))
        except Exception as e:  # (restore never raises; a JACK hiccup must not end the supervisor)
            log.warning("making remembered connections again failed: %s", e)
            return
        if made:
            log.info(what, made)

    def remembered_connections(self) -> list[list[str]]:
        """The connections kept for when their ports are there (state file)."""
        return [list(p) for p in self._remembered]

    def _restore_connections(self, saved) -> None:
        """At the first start: the connections of the last run, made where
        both ports exist now, remembered for when the other one comes."""
        if not isinstance(saved, list) or self.io is None:
            return
        me = self.io.client_name + ":"
        pairs = []
        for pair in saved:
            if (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) and ":" in x for x in pair)
                    and (pair[0].startswith(me) or pair[1].startswith(me))):
                pairs.append((pair[0], pair[1]))
            else:
                log.warning("state: connection %r not restored: not a pair of JACK port names, one of them ours",
                            pair)
        self._remembered = dict.fromkeys([*self._remembered, *pairs])
        self._restore_remembered("restored %d connection(s) from the state file")
        self._follow_connections()

    # ------------------------------------------------------------------
    # services around the engine

    def emit(self, topic: str, doc: dict) -> None:
        if self.control is not None:
            self.control.emit(topic, doc)

    def _start_services(self) -> None:
        from .state import StateStore, default_state_dir

        cfg = self.config
        if getattr(cfg, "control", None) is not None and cfg.control.enabled:
            from .control import ControlServer

            self.control = ControlServer(self, cfg.control)
            self.control.start()
            self.registry.add_listener(
                lambda a, v, s: self.emit("event.param", {"address": a, "value": v, "source": s}))
        st = getattr(cfg, "state", None)
        if st is not None and st.enabled:
            path = st.file or os.path.join(default_state_dir(), "state.json")
            self.state = StateStore(path, st.save_debounce_ms / 1000.0)

    def _on_first_ready(self) -> None:
        """Restore saved values (once), then follow changes; start MIDI."""
        if self._restored:
            return
        self._restored = True
        from .state import restore

        if self.state is not None:
            if self.config.state.restore:
                doc = self.state.load()
                if doc:
                    self._restore_connections(doc.get("connections"))
                    if isinstance(doc.get("midi_connections"), list):
                        self._midi_connections = doc["midi_connections"]
                    self._restore_chains(doc.get("chains"))
                    n, problems = restore(self.registry, doc)
                    log.info("restored %d value(s) from %s", n, self.state.path)
                    for p in problems:
                        log.warning("state: not restored: %s", p)
            self.state.attach(self._snapshot)
            self.registry.add_listener(self.state.changed)
        # MIDI ports may take a while to open (or never, on a broken
        # setup): that must not hold back READY or the audio
        threading.Thread(target=self._start_midi, name="quietcast-midi-start", daemon=True).start()

    def _restore_chains(self, saved) -> None:
        """At the first start: load again the chains ``load_chain`` put on
        channels before the daemon stopped (before their values are
        restored). One that no longer loads is left to the config, with a
        warning; the daemon starts anyway."""
        if not isinstance(saved, dict):
            return
        names = {c.name for c in self.config.channels}
        for channel, what in saved.items():
            if channel not in names or not isinstance(what, str):
                log.warning("state: chain of channel %r not restored: no such channel in the config", channel)
                continue
            try:
                self.load_chain(channel, what)
                log.info("restored chain %r on channel %s", what, channel)
            except Exception as e:
                log.warning("state: chain %r of channel %s not restored, the config's runs: %s", what, channel, e)

    def _start_midi(self, wait_ready_s: float | None = None) -> None:
        """Start MIDI control when [midi] enabled and it is not running (at
        the first start, and at a reload: e.g. after the mapping file was
        fixed). On failure MIDI stays off and :attr:`midi_problem` keeps
        why (shown in ``status`` and by ``learn``); the audio runs on."""
        cfg = getattr(self.config, "midi", None)
        if cfg is None or not cfg.enabled:
            return
        # a start under way (the first one waits up to 10 s for the JACK MIDI ports) is not waited for
        # from the supervisor: a reload then goes on, and that start is the one that counts
        if not self._midi_lock.acquire(blocking=wait_ready_s is None):
            return
        try:
            self._start_midi_locked(cfg, wait_ready_s)
        finally:
            self._midi_lock.release()

    def _start_midi_locked(self, cfg, wait_ready_s: float | None) -> None:
        if self.midi is not None:
            return
        mc = None
        try:
            from .midi import MidiControl, mapping_path

            mc = MidiControl(self.registry, cfg, self.server, self.config.jack.client_name,
                             state_dir=os.path.dirname(mapping_path(self.config)))
            mc.on_learned = lambda b: self.emit("event.learn", b)
            mc.remember_connections(self._midi_connections)  # (the last one's, or the state file's)
            if self.state is not None:
                mc.on_connections_changed = self.state.changed
            mc.start(**({} if wait_ready_s is None else {"wait_ready_s": wait_ready_s}))
        except Exception as e:  # MIDI trouble never stops the audio
            self.midi_problem = ("not started (fix this, then reload the config to start it: `quietcast ctl "
                                 f"reload` or SIGHUP): {e}")
            log.warning("MIDI control %s", self.midi_problem)
            if mc is not None:
                try:
                    mc.stop()
                except Exception:
                    pass
            return
        with self._midi_set:
            if not self._stop.is_set():
                self.midi = mc
                self.midi_problem = None
                return
        mc.stop()  # the daemon stopped while MIDI started

    def _midi_connections_now(self) -> list:
        midi = self.midi
        return midi.jack_connections if midi is not None else list(self._midi_connections)

    def midi_status(self) -> dict:
        """MIDI control's status (:meth:`MidiControl.status`) while it
        runs; else ``enabled``, ``running`` (false), ``mapping`` and
        ``problem``: why it is not running."""
        midi = self.midi
        if midi is not None:
            return midi.status()
        from .midi import mapping_path

        cfg = getattr(self.config, "midi", None)
        enabled = bool(cfg is not None and cfg.enabled)
        return {"enabled": enabled, "running": False, "mapping": mapping_path(self.config) if cfg else None,
                "problem": self.midi_not_running()}

    def midi_not_running(self) -> str:
        """Why MIDI control is not running, in words."""
        cfg = getattr(self.config, "midi", None)
        if cfg is None or not cfg.enabled:
            return "disabled in this daemon's config ([midi] enabled = false)"
        if self.midi_problem:
            return self.midi_problem
        if self._restored:
            return "starting (opening its ports)"
        return "not started yet (it starts once the engine runs: waiting for the JACK server)"

    def call_in_main(self, fn: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run ``fn`` on the supervisor thread (where plugins may be loaded)
        and return its result; from the supervisor itself, call directly."""
        if self._supervisor is None or threading.get_ident() == self._supervisor:
            return fn()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, fut))
        self._wake.set()
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            if fut.cancel():  # not begun: it never will be (a reply of "failed" must mean nothing changed)
                raise ControlError("failed", f"the daemon's supervisor did not get to it within {timeout:g} s (is it "
                                             "waiting for a JACK server that does not answer, a frozen jackd?); "
                                             "nothing was changed") from None
            raise ControlError("failed", f"still running after {timeout:g} s; its outcome is logged") from None

    def _run_jobs(self) -> None:
        while True:
            try:
                fn, fut = self._jobs.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue  # its caller gave up waiting
            try:
                fut.set_result(fn())
            except BaseException as e:  # handed to the caller's thread
                fut.set_exception(e)

    # ------------------------------------------------------------------
    # commands that change the graph or the config

    def load_chain(self, channel: str, chain: str) -> dict:
        from quietcast.bridge import Chain

        self.registry._channel_index(channel, channel)  # an unknown channel is refused before any work
        if self.engine is None:  # (said at once: the supervisor may be waiting for a server that does not answer)
            raise NotReadyError("the engine is not running yet (waiting for the JACK server)")
        new = None
        if chain:
            try:
                new = Chain.load(chain)
            except ChainSpecError as e:
                raise _refused(e) from None

        def job():
            if self.engine is None:
                raise NotReadyError("the engine is not running yet (waiting for the JACK server)")
            proc = self._build_chain(new)
            ov = self.registry.chain_overrides
            dropped = {a: ov.pop(a) for a in [a for a in ov if a.startswith(f"{channel}.chain.")]}
            try:
                return self._put_chain(channel, new, proc)
            except ControlError:  # the old chain stays on air: with its live values
                ov.update(dropped)
                raise

        out = self.call_in_main(job)
        self.loaded_chains[channel] = os.path.abspath(chain) if chain and os.path.exists(chain) else chain
        if self.state is not None:  # the choice is part of the state: a restart loads it again
            self.state.changed()
        if self.midi is not None:  # the chain's values are the new file's: faders pick them up, motors move
            self.midi.values_changed(f"{channel}.chain.")
        log.info("loaded chain %r on channel %s", chain, channel)
        self.emit("event.state", {"state": "chain_loaded", "channel": channel, "chain": chain, **out})
        return out

    def _build_chain(self, new, where: str = ""):
        """Chain ``new`` (a bridge Chain, or None) built for the running
        engine: its processor, or None; a chain that cannot be built is
        refused (``failed``, every problem)."""
        try:
            return new.processor(self.engine.sample_rate, 1) if new else None
        except ChainSpecError as e:
            raise _refused(e, where) from None

    def _put_chain(self, channel: str, new, proc, loaded: bool = True) -> dict:
        """On the supervisor thread: run chain ``new`` (a bridge Chain, or
        None), built as ``proc`` (:meth:`_build_chain`), on ``channel`` from
        now on, with the channel's kept live chain values; ``loaded``: it is
        ``load_chain``'s choice (kept over the config's by a rebuild), not
        the config's own. Within the engine's chain budget the swap is made
        at a hop boundary, the new chain warmed up unheard and crossfaded in
        (``Engine.swap_chain``); beyond it the client is re-opened."""
        eng = self.engine
        i = self.registry._channel_index(channel, channel)
        before = self.chains.get(channel, _MISSING), self.loaded_chains.get(channel, _MISSING)
        if loaded:
            self.chains[channel] = new
        else:
            self.chains.pop(channel, None)
            self.loaded_chains.pop(channel, None)
        if proc is not None:
            self.registry.reapply_to(i, proc)
        L = proc.latency if proc else 0
        if L <= eng.chain_budget:
            if self._engine_thread is not None and self._engine_thread.is_alive():
                done = threading.Event()
                gate = threading.Lock()  # the swap happens, or is called off, not both
                off = []

                def swap(e, i=i, proc=proc):
                    with gate:
                        if not off:
                            e.swap_chain(i, proc)
                            done.set()

                self.registry.pending.append(swap)  # at a hop boundary, on the engine thread
                if not done.wait(5):
                    with gate:
                        off.append(True)
                        taken = done.is_set()
                    if not taken:  # (no hops: a JACK server that runs no cycles, e.g. frozen; or a hung engine)
                        for d, v in zip((self.chains, self.loaded_chains), before):  # as they were
                            if v is _MISSING:
                                d.pop(channel, None)
                            else:
                                d[channel] = v
                        raise ControlError("failed", "the engine did not take the new chain within 5 s (it runs no "
                                                     "hops: is the JACK server stalled?); the old chain stays")
            else:
                eng.swap_chain(i, proc)
            return {"latency_frames": self.io.latency if self.io else None, "reopened": False}
        log.info("chain of %s needs %d frames, more than the %d budgeted: re-opening", channel, L, eng.chain_budget)
        self._reopen()
        return {"latency_frames": self.io.latency if self.io else None, "reopened": True}

    def _edited_chains(self, old, new) -> tuple[list[str], list[str]]:
        """What a reload from config ``old`` to ``new`` does to the chains:
        (channels whose chain the file changed, by path or by content: the
        file's chain runs there, in place of one ``load_chain`` put there;
        live chain values to drop: those of the chains replaced wholesale,
        and each value the edited file changed, by stage and parameter).
        A live value the file did not change stays, like a channel's."""
        olds = {c.name: c for c in old.channels}
        news = {c.name: c for c in new.channels}

        def stages(c):
            return {s.name: s for s in c.chain_spec.stages} if c.chain_spec is not None else {}

        def doc(c):
            return c.chain, (c.chain_spec.to_dict() if c.chain_spec is not None else None)

        edited = [n for n, c in news.items() if n in olds and doc(olds[n]) != doc(c)]
        drop = []
        for address in self.registry.chain_overrides:
            ch, _, stage, name = address.split(".", 3)
            if ch not in news:
                drop.append(address)
            elif ch in edited:
                if ch in self.chains:  # a load_chain'ed chain's value: that chain goes
                    drop.append(address)
                    continue
                a, b = stages(olds[ch]).get(stage), stages(news[ch]).get(stage)
                if a is None or b is None or a.type != b.type:
                    drop.append(address)
                elif name == "bypass" and a.bypass != b.bypass:
                    drop.append(address)
                elif name != "bypass" and a.values.get(name, _MISSING) != b.values.get(name, _MISSING):
                    drop.append(address)
        return edited, drop

    @staticmethod
    def _pw_quantum_moved(old, new) -> bool:
        """Whether a reload's ``[jack]`` section asks PipeWire for another
        quantum, under PipeWire's JACK layer (JACK2 has no such request)."""
        return old.pipewire_quantum != new.pipewire_quantum and "PipeWire" in jackio.libjack_version()

    @classmethod
    def _jack_needs_reopen(cls, old, new) -> bool:
        """Whether a reload's ``[jack]`` section needs the client re-opened:
        another client name or server; another PipeWire quantum (asked for
        at an open). ``reconnect_interval_ms`` is read where it is used."""
        return (old.client_name, old.server) != (new.client_name, new.server) or cls._pw_quantum_moved(old, new)

    def reload(self) -> dict:
        from .config import ConfigError, load_config

        path = getattr(self.config, "path", None)
        if not path:
            raise ControlError("failed", "this daemon was not started from a config file: nothing to reload")
        try:
            new = load_config(path)
        except Exception as e:  # a config error, or e.g. a model bundle that cannot be read: never fatal
            checked = isinstance(e, ConfigError)
            log.warning("reload refused, the running config stays: %s", e if checked else f"{path}: {e}")
            self.notifier.reloading()
            self.notifier.ready(self._status_line())
            raise (_refused(e) if checked else ControlError("failed", f"{path}: {e}")) from None

        def job():
            old = self.config

            def shape(c):
                return (c.name, c.stems)

            structural = (self._jack_needs_reopen(old.jack, new.jack) or old.engine != new.engine
                          or [shape(c) for c in old.channels] != [shape(c) for c in new.channels])
            olds = {c.name: c for c in old.channels}  # the channel values the new file changes
            edits = [(nc.name, k, getattr(nc, k)) for nc in new.channels if nc.name in olds
                     for k in CHANNEL_PARAMS if getattr(olds[nc.name], k) != getattr(nc, k)]
            # new connection rules connect at once, with no rebuild (a rule taken out leaves what it connected)
            rules = [f"{nc.name}.{k}" for nc in new.channels if nc.name in olds
                     for k in ("connect_in", "connect_out") if getattr(olds[nc.name], k) != getattr(nc, k)]
            edited, drop = self._edited_chains(old, new)
            news = {c.name: c for c in new.channels}
            procs = {}
            if not structural and edited:
                # a new chain for each edited channel, built (and refused, with nothing changed) first
                if self.engine is None:
                    structural = True  # nothing runs to swap them into: rebuilt
                else:
                    procs = {n: self._build_chain(news[n].chain_spec, f"channel {n}: ") for n in edited}
                    if any(p is not None and p.latency > self.engine.chain_budget for p in procs.values()):
                        structural = True  # longer than the chain budget: rebuilt
            changed = []
            old_chains, old_overrides = dict(self.chains), dict(self.registry.chain_overrides)
            old_loaded = dict(self.loaded_chains)
            if structural:
                # they win over the live values the rebuild keeps
                self._reload_edits = {(n, k) for n, k, _ in edits}
                changed = sorted([f"{n}.{k}" for n, k, _ in edits] + [f"{n}.chain" for n in edited] + rules)
                self.config = new
                # a chain load_chain put on a channel stays, unless the file changed that channel's chain
                self.chains = {n: c for n, c in old_chains.items() if n in news and n not in edited}
                self.loaded_chains = {n: c for n, c in old_loaded.items() if n in self.chains}
                for a in drop:
                    del self.registry.chain_overrides[a]
                def undo():
                    self.config = old
                    self.chains = old_chains
                    self.loaded_chains = old_loaded
                    self.registry.chain_overrides.clear()
                    self.registry.chain_overrides.update(old_overrides)
                    self._reload_edits = set()
                    self._prebuilt = None

                # the new engine is built first, while the old one stays on air: a config that cannot run
                # is refused with no dropout (the JACK client is closed only for one that can)
                sr = (self.engine.sample_rate if self.engine is not None
                      else self.io.sample_rate if self.io is not None else 48_000)
                try:
                    self._prebuilt = self._new_engine(sr)
                except Exception as e:
                    log.warning("reload refused, the running config stays: %s", e)
                    undo()
                    raise ControlError("failed", f"the new config cannot run: {e}") from None
                try:
                    self._reopen()
                except Exception as e:  # pragma: no cover - a JACK failure while re-opening: the old config again
                    log.warning("reload refused, the running config stays: %s", e)
                    undo()
                    self._reopen()
                    raise ControlError("failed", f"the new config cannot run: {e}") from None
                self._prebuilt = None  # (JACK is down: the check was the point; the next open builds anew)
            else:
                todo = [(f"{n}.{k}", v) for n, k, v in edits]
                for address, v in todo:  # all or nothing: e.g. a pause gate the model lacks is refused first
                    self.registry.check(address, v)
                if edited and self._stalled_since is not None:  # (a chain swap waits for a hop: none comes)
                    raise ControlError("failed", "the JACK server runs no cycles (stalled, frozen?): edited chains "
                                                 "cannot be swapped in now; nothing was changed")
                for address, v in todo:
                    self.registry.set(address, v, source="config")
                    changed.append(address)
                self.config = new
                if rules:
                    self._apply_rules(restore=False)
                    changed.extend(rules)
                for a in drop:
                    del self.registry.chain_overrides[a]
                left = list(edited)
                try:
                    while left:
                        self._put_chain(left[0], news[left[0]].chain_spec, procs[left[0]], loaded=False)
                        changed.append(f"{left.pop(0)}.chain")
                except ControlError as e:  # (the engine stopped taking hops meanwhile)
                    # the channels whose chain did not change keep their old config, so that the next
                    # reload sees the edit again and makes it (their values set above are the same again)
                    import dataclasses

                    self.config = dataclasses.replace(new, channels=[old.channel(c.name) if c.name in left else c
                                                                     for c in new.channels])
                    raise ControlError("failed", f"{e.message} on {', '.join(left)}: reload again once the server "
                                                 f"runs; applied meanwhile: {', '.join(changed) or 'nothing'}") \
                        from None
            # the MIDI bridge's JACK client asks PipeWire for the quantum it started with (it inherits
            # PIPEWIRE_LATENCY): while it runs with the old request the graph keeps the old quantum
            pw_moved = self._pw_quantum_moved(old.jack, new.jack)
            if self.midi is not None and (getattr(old, "midi", None) != getattr(new, "midi", None) or pw_moved):
                # its section changed (off, other ports, another mapping file), or the quantum to ask
                # PipeWire for: stopped, then started again below with the new settings when it is
                # still enabled
                with self._midi_set:
                    running, self.midi = self.midi, None
                self._midi_connections = running.jack_connections  # the next one makes them again
                try:
                    running.stop()
                except Exception as e:  # pragma: no cover - MIDI trouble never stops a reload
                    log.warning("MIDI control did not stop cleanly: %s", e)
                self.midi_problem = None
                log.info("MIDI control stopped: %s", "the [midi] section changed" if not pw_moved else
                         "[jack] pipewire_quantum changed (its JACK client asks PipeWire for a quantum)")
            if self.midi is not None:
                try:
                    self.midi.reload()  # the mapping file too; a broken one keeps the old bindings
                except Exception as e:
                    log.warning("MIDI mapping not reloaded: %s", e)
                if structural:
                    self.midi.values_changed()
                else:
                    for n in edited:
                        self.midi.values_changed(f"{n}.chain.")
            elif self._restored:
                # enabled but not running (its mapping file was broken at the start, or MIDI was off):
                # start it now (without waiting for the JACK MIDI ports: they appear when the bridge is up)
                self._start_midi(wait_ready_s=0)
            if self.state is not None and (self.loaded_chains != old_loaded
                                           or self.registry.chain_overrides != old_overrides):
                self.state.changed()  # load_chain choices or live chain values the reload replaced
            return {"changed": changed, "rebuilt": structural}

        self.notifier.reloading()
        try:
            out = self.call_in_main(job)
        finally:
            self.notifier.ready(self._status_line())
        log.info("reloaded %s: %s", path, "engine rebuilt" if out["rebuilt"] else f"{len(out['changed'])} value(s) changed")
        self.emit("event.state", {"state": "reloaded", **out})
        return out

    def _snapshot(self) -> dict:
        """What the state file holds (:func:`.state.snapshot`): values, MIDI
        bindings, loaded chains, and the connections to make again."""
        from .state import snapshot

        return snapshot(self.registry, self.midi, self.loaded_chains, self.remembered_connections(),
                        self._midi_connections_now())

    def save_state(self) -> dict:
        if self.state is None:
            raise ControlError("unavailable", "no state file is configured")
        doc = self._snapshot()
        try:
            self.state.save(doc)
        except OSError as e:  # a read-only or full file system, a folder in the way: the user's to fix
            raise ControlError("failed", f"cannot write the state file {self.state.path}: {e.strerror or e}") from None
        return {"path": self.state.path, "params": len(doc["params"])}

    # ------------------------------------------------------------------
    # running

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _nap(self, seconds: float) -> None:
        """The supervisor's wait between rounds (``seconds``, or until a stop
        is asked for), running each job as it is posted (:meth:`call_in_main`:
        a foreseen plugin value answers in about a millisecond, not after
        the rest of a 50 ms round or of the reconnect interval)."""
        end = time.monotonic() + seconds
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0 or not self._wake.wait(left):
                return
            self._wake.clear()  # (a job posted from here on sets it again)
            self._run_jobs()

    def request_reload(self) -> None:
        """Re-read the config on the supervisor thread (what SIGHUP does)."""
        self._reload_requested.set()

    #: seconds a stop asked for by SIGTERM or SIGINT may take; past that the
    #: daemon saves its state and exits without finishing it (see _watch_signals)
    STOP_DEADLINE_S = 5.0

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads, SIGUSR1 dumps the thread
        stacks. Python runs a signal's handler on the main thread (the
        supervisor) between two bytecodes, never while that thread waits in
        C; and libjack waits without end for a frozen jackd (SIGSTOP, a hung
        driver): in ``jack_client_open``, deactivate, close, connect. So the
        signals also wake a thread of their own (``signal.set_wakeup_fd``),
        which sets the stop flag itself and gives the stop
        :attr:`STOP_DEADLINE_S` seconds (see :meth:`_watch_signals`)."""
        def on_term(signum, frame):
            self.request_stop()

        def on_int(signum, frame):
            self._sigint += 1
            if self._sigint > 1:
                os.write(2, b"quietcast: second interrupt, exiting now\n")
                os._exit(130)
            self.request_stop()

        def on_hup(signum, frame):
            self._reload_requested.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)
        signal.signal(signal.SIGHUP, on_hup)
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=self._watch_signals, args=(r,), name="quietcast-signals", daemon=True).start()
        import faulthandler

        faulthandler.register(signal.SIGUSR1, all_threads=True)  # thread stacks to the log (stderr)

    def _watch_signals(self, fd: int) -> None:
        """The signal-wakeup thread: at SIGTERM or SIGINT it sets the stop
        flag (the main thread may be inside a libjack call that waits for a
        frozen server, where no Python signal handler runs) and waits for
        :meth:`run` to return. When it has not after
        :attr:`STOP_DEADLINE_S` seconds, it says where the supervisor
        waits, saves the state, and ends the process (status 0: the stop
        was asked for) instead of leaving it to systemd's SIGKILL."""
        stops = {signal.SIGTERM, signal.SIGINT}
        while True:
            try:
                got = os.read(fd, 64)
            except InterruptedError:
                continue
            except OSError:
                return
            if stops & set(got):
                break
        self._stop.set()
        self._wake.set()
        if self._finished.wait(self.STOP_DEADLINE_S):
            return
        self._stop_overdue()

    def _stop_overdue(self) -> None:
        import faulthandler
        import traceback

        where = "?"
        frame = sys._current_frames().get(self._supervisor) if self._supervisor is not None else None
        if frame is not None:
            where = " <- ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                                for f in reversed(traceback.extract_stack(frame)[-3:]))
        log.error("the stop did not finish within %g s of the signal (the supervisor waits in %s: a JACK server "
                  "that does not answer, e.g. a frozen jackd); saving the state and exiting without it",
                  self.STOP_DEADLINE_S, where)
        try:
            faulthandler.dump_traceback(all_threads=True)  # every thread's stack, for the log
        except Exception:
            pass
        try:
            self.notifier.stopping()
            if self.state is not None:
                self.state.flush()
        except Exception as e:  # pragma: no cover - exiting regardless
            log.error("state not saved: %s", e)
        for h in logging.getLogger().handlers:
            try:
                h.flush()
            except Exception:
                pass
        os._exit(0)

    def run(self) -> int:
        """Supervise until stopped. Returns the exit status (0)."""
        self._supervisor = threading.get_ident()
        if self._supervisor != self._prebuilt_on:  # its plugins were loaded on another thread: built again here
            self._prebuilt = None
        waiting_logged = False
        # the JACK callback needs the GIL every period: a thread that holds it
        # must hand it over within 0.1 ms, not Python's default 5 ms (a whole
        # period at 256 frames)
        sys.setswitchinterval(0.0001)
        self._ask_pipewire_quantum()  # (before the MIDI bridge's process starts: it inherits it)
        try:
            self._start_services()
            while not self._stop.is_set():
                self._run_jobs()
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    try:
                        self.reload()
                    except ControlError as e:
                        log.warning("SIGHUP reload: %s", e.message)
                    except Exception as e:  # whatever a reload meets, the daemon keeps running
                        log.exception("SIGHUP reload failed, the running config stays: %s", e)
                io = self.io
                interval = self.config.jack.reconnect_interval_ms / 1000.0  # (a reload may change it)
                if io is None or not io.alive:
                    if io is not None:
                        log.warning("JACK server went away; reconnecting every %.1f s", interval)
                        self.ready.clear()
                        self.emit("event.state", {"state": "reconnecting"})
                        self._down_since = time.monotonic()
                        self._close_io()
                    if self._try_open(quiet=waiting_logged):
                        waiting_logged = False
                        if self._down_since is not None:
                            self.reconnects += 1
                            self.last_reconnect_s = time.monotonic() - self._down_since
                            log.info("back after %.2f s", self.last_reconnect_s)
                            self._down_since = None
                            if self.midi is not None:
                                self.midi.reopen_jack()  # its bridge follows the server at once
                        self._on_first_ready()
                        self.ready.set()
                        self.notifier.ready(self._status_line())
                        self.emit("event.state", {"state": "ready", "latency_frames": self.io.latency})
                        for cb in self.on_ready:
                            cb(self)
                    else:
                        if not waiting_logged:
                            log.warning("waiting for the JACK server%s%s", f" {self.server!r}" if self.server else "",
                                        "; libjack's messages about each attempt are left out until it answers"
                                        if jackio.libjack_quiet.silent_function() is not None else "")
                            waiting_logged = True
                        self._housekeeping()
                        self._nap(interval)
                        continue
                self._check_cycles()
                self._housekeeping()
                if self.io.ports_changed.is_set():
                    self._apply_rules()
                if self.io.connections_changed.is_set():
                    # looked at a little later (0.3 s after the first change, however many follow): a
                    # client that closes takes its connections down just before its ports, which must
                    # not read as "taken down by hand"
                    self.io.connections_changed.clear()
                    if self._conn_due is None:
                        self._conn_due = time.monotonic() + 0.3
                elif self._conn_due is not None and time.monotonic() >= self._conn_due:
                    self._follow_connections()
                if self._closed_for_a_change():
                    continue
                self._nap(0.05)
        finally:
            self._stop.set()  # (also when leaving on an exception: a MIDI start in progress sees it)
            self.notifier.stopping()
            self.emit("event.state", {"state": "stopping"})
            self._fade_out()
            final = self.status()
            with self._midi_set:
                midi = self.midi
            # MIDI stops beside the JACK client's close: against a frozen jackd each waits up to 1.5 s
            # for it, and one after the other they took 3.3 s of systemd's stop timeout
            midi_stop = None
            if midi is not None:
                midi_stop = threading.Thread(target=midi.stop, name="quietcast-midi-stop", daemon=True)
                midi_stop.start()
            if self.state is not None:
                self.state.flush()
            self._close_io()
            if midi_stop is not None:
                midi_stop.join(10)
            self.ready.clear()
            if self.control is not None:
                time.sleep(0.05)  # let the stopping event out
                self.control.stop()
            self._run_jobs()
            log.info("final status: %s", json.dumps({k: v for k, v in final.items() if k not in ("meters", "params")},
                                                    default=str))
            self._finished.set()
        return 0

    def _closed_for_a_change(self) -> bool:
        """A change under the client it cannot follow in place (a sample
        rate; a period :meth:`_follow_period` could not take): close it,
        keeping its ports' connections for the client the supervisor opens
        next; True when it did. (A method, not lines of the supervisor loop:
        with them there, a rebuild's old client and its rings were kept for
        good: test_the_heap_is_frozen_before_audio_and_thawed_on_a_rebuild.
        Its locals end with the call.)"""
        io, why = self.io, ""
        if io.rate_changed.is_set():
            why = (f"JACK sample rate changed {io.sample_rate} -> {io.rate_seen} Hz; re-opening to run the engine "
                   "at the new rate")
        elif io.period_changed.is_set() and not self._follow_period():
            why = "JACK period changed; reopening to re-declare latency"
        if not why:
            return False
        log.warning("%s", why)
        self._kept_connections = io.connections()
        self._close_io()
        return True

    def _ask_pipewire_quantum(self) -> None:
        """Under PipeWire's JACK layer, ask the graph for ``[jack]
        pipewire_quantum`` (PIPEWIRE_LATENCY, which PipeWire's libjack reads
        at each client's open: the audio client, the probes, the MIDI
        bridge's process), unless the environment the daemon started with
        names one (:meth:`JackConfig.pipewire_latency`). Called before each
        open, so a reload that changes the key takes effect with the client
        it re-opens. PipeWire runs its
        graph at the smallest quantum its nodes ask for (within its
        clock.min/max-quantum): 1024 frames by default, a declared latency
        of 50.7 ms; 256 gives 34.7 ms. JACK2 has no such request (its period
        is jackd's ``-p``): nothing is set."""
        if "PipeWire" not in jackio.libjack_version():
            return
        if self._pw_latency_env is None:  # the environment the daemon started with, once
            self._pw_latency_env = os.environ.get("PIPEWIRE_LATENCY", "")
            if self._pw_latency_env:
                log.info("PipeWire: PIPEWIRE_LATENCY=%s from the environment", self._pw_latency_env)
        want = self.config.jack.pipewire_latency({"PIPEWIRE_LATENCY": self._pw_latency_env}) or ""
        if want == os.environ.get("PIPEWIRE_LATENCY", ""):
            return
        if want:
            os.environ["PIPEWIRE_LATENCY"] = want
            log.info("PipeWire: asking its graph for a quantum of %d frames (PIPEWIRE_LATENCY=%s)",
                     self.config.jack.pipewire_quantum, want)
        else:
            os.environ.pop("PIPEWIRE_LATENCY", None)

    def _follow_period(self) -> bool:
        """The JACK period changed (``jack_bufsize``; PipeWire changes its
        quantum whenever an application asking for another latency starts
        or stops). The engine moved its buffering, and with it the
        declared latency, in the buffer-size callback already
        (:meth:`Engine.change_period`: a 10 ms crossfade, no silence, the
        ports and their connections untouched): report the new latency on
        the ports (``jack_recompute_total_latencies``), in ``status``, the
        log and an ``event.state``. False when the engine did not (the
        latency would not fit the rings): the client is then re-opened, as
        it was for every period change before."""
        io, eng = self.io, self.engine
        io.period_changed.clear()
        new = io.blocksize_seen
        if not new or new == io.period:
            return True
        if eng is None or eng.io is not io or io.latency != eng.latency_for_period(new):
            return False  # (change_period set io.latency for the new period, or could not)
        old, io.period = io.period, new
        try:
            jackio.libjack().jack_recompute_total_latencies(jackio._addr(io.client._ptr))
        except Exception as e:  # (the ports keep the old figure: said, not fatal)
            log.warning("could not re-declare the latency on the JACK ports: %s", e)
        log.info("JACK period changed %d -> %d frames: latency now %d frames (%.1f ms), changed in place "
                 "(a 10 ms crossfade, no dropout)", old, new, io.latency, 1000.0 * io.latency / io.sample_rate)
        self.notifier.status(self._status_line())
        self.emit("event.state", {"state": "ready", "latency_frames": io.latency, "period": new})
        return True

    def _status_line(self) -> str:
        io = self.io
        if io is None or io.client is None:
            return f"waiting for the JACK server{' ' + repr(self.server) if self.server else ''}"
        if self._stalled_since is not None:
            return (f"the JACK server{' ' + repr(self.server) if self.server else ''} has run no cycle for "
                    f"{time.monotonic() - self._stalled_since:.0f} s (frozen?)")
        c, t = io.counters, self._totals
        return (f"{len(self.config.channels)} channel(s), latency {1000.0 * io.latency / io.sample_rate:.1f} ms, "
                f"{int(c[jackio.XRUNS]) + t['xruns']} xruns, "
                f"{int(c[jackio.DEADLINE_MISSES]) + t['deadline_misses']} deadline misses, "
                f"{self.reconnects} reconnects" + (f", {len(self.faults)} stage fault(s)" if self.faults else "")
                + (f", {self.bad_samples} NaN/Inf input samples silenced" if self.bad_samples else ""))

    @property
    def bad_samples(self) -> int:
        """NaN/Inf samples that arrived on the input ports since the start,
        each replaced by silence before anything used it."""
        with self._bad_lock:
            eng = self.engine
            return self._bad_before + (eng.stats.bad_samples if eng is not None else 0)

    #: seconds without a JACK cycle after which the server counts as stalled (a period is at most ~0.2 s)
    JACK_STALL_S = 2.0

    def _check_cycles(self) -> None:
        """Notice a JACK server that stops running cycles while the client
        stays connected (a frozen jackd: SIGSTOP, a hung driver). libjack
        says nothing then: no shutdown, no xrun; the audio just stands
        still. After :attr:`JACK_STALL_S` without a cycle: a warning,
        ``ready`` false, ``jack_stalled_s`` in ``status``, an
        ``event.state`` ``stalled``; the watchdog is pinged on (the hang is
        the server's: a restart of quietcast would not help, and would come
        back to a jack_client_open that waits for the frozen server). When
        cycles run again, all of it is undone; when the server dies instead,
        its shutdown is handled as ever (reconnect).

        PipeWire's JACK layer (0.3.65) sends no shutdown when PipeWire
        dies or restarts, and its client goes on as if connected: only the
        cycles stop. So while stalled, every :attr:`PROBE_S` a probe client
        (:meth:`_server_lost`) looks for this client's ports in the server's
        graph: a server that cannot be reached, or one that no longer lists
        them (a PipeWire restarted), counts as the server gone: a reconnect.
        A frozen server keeps the probe waiting, and no other starts."""
        io = self.io
        if io is None or io.client is None:
            return
        if self._probe_lost.is_set():
            self._probe_lost.clear()
            if self._stalled_since is not None and io.alive:
                log.warning("the JACK server no longer has this client (it died or restarted without a word, "
                            "as PipeWire does)")
                io.shutdown_event.set()  # (the supervisor's reconnect, as after a shutdown)
                return
        cyc, now = int(io.counters[jackio.CYCLES]), time.monotonic()
        if cyc != self._seen_cycles:
            self._seen_cycles, self._cycles_seen_at = cyc, now
            if self._stalled_since is not None:
                took, self._stalled_since = now - self._stalled_since, None
                log.info("the JACK server runs cycles again, after %.1f s without", took)
                self.ready.set()
                self.notifier.status(self._status_line())
                self.emit("event.state", {"state": "ready", "latency_frames": io.latency, "stalled_s": round(took, 3)})
        elif self._stalled_since is None and now - self._cycles_seen_at >= self.JACK_STALL_S:
            self._stalled_since = self._cycles_seen_at
            log.warning("the JACK server has run no cycle for %.1f s (is jackd frozen, e.g. stopped with SIGSTOP, "
                        "or its driver hung?); the audio stands still until it runs again or goes away",
                        now - self._cycles_seen_at)
            self.ready.clear()
            self.notifier.status(self._status_line())
            self.emit("event.state", {"state": "stalled"})
        if self._stalled_since is not None and now - self._probe_at >= self.PROBE_S and not self._stop.is_set() \
                and (self._probe_thread is None or not self._probe_thread.is_alive()):
            self._probe_at = now
            self._probe_thread = threading.Thread(target=self._server_lost, args=(io.client_name,),
                                                  name="quietcast-jack-probe", daemon=True)
            self._probe_thread.start()

    #: while stalled, how often the server is asked whether it still has this client
    PROBE_S = 1.0

    def _server_lost(self, name: str) -> None:
        """(The stall probe's thread.) Sets ``_probe_lost`` when the server
        cannot be reached or lists none of ``name``'s ports."""
        import jack

        try:
            if not self._ports_on_server(name):
                self._probe_lost.set()
        except jack.JackError:
            pass

    def _housekeeping(self) -> None:
        """Watchdog pings (only while the engine makes progress), STATUS
        every few seconds, stage faults reported once each."""
        now = time.monotonic()
        n = self.notifier
        if n.watchdog_s and now - self._last_ping >= n.watchdog_s / 2:
            eng, io = self.engine, self.io
            running = io is not None and io.alive and eng is not None and self._stalled_since is None
            hops = eng.stats.hops if eng is not None else -1
            if not running or hops != self._ping_hops:  # waiting for JACK (gone or stalled) is not a hang
                n.watchdog()
                self._last_ping = now
                self._ping_hops = hops
        if now - self._last_status >= 5.0:
            self._last_status = now
            n.status(self._status_line())
        eng = self.engine
        if eng is not None:
            for name, proc in zip(eng.names, eng.chains):
                for stage, why in (proc.faults.items() if proc else ()):
                    key = f"{name}.chain.{stage}"
                    if key not in self.faults:
                        self.faults[key] = why
                        log.warning("channel %s: stage %s failed (%s); it is bypassed, the other channels run on",
                                    name, stage, why)
                        self.emit("event.state", {"state": "fault", "channel": name, "stage": stage, "reason": why})
            if eng.sup.fault and "suppressor" not in self.faults:
                self.faults["suppressor"] = eng.sup.fault
                log.error("the suppressor failed (%s); every channel now passes the delayed dry signal", eng.sup.fault)
                self.emit("event.state", {"state": "fault", "stage": "suppressor", "reason": eng.sup.fault})

    def _fade_out(self) -> None:
        """Ramp every output to silence over one hop, let it play, then stop."""
        eng, io = self.engine, self.io
        if eng is None or io is None or not io.alive:
            return
        for name in eng.names:
            eng.set_params(name, mute=True)
        hop_s = eng.hop / eng.sample_rate
        deadline = time.monotonic() + 3 * hop_s + io.latency / io.sample_rate + 0.1
        while time.monotonic() < deadline:
            time.sleep(hop_s)
        # (the mute went straight to the engine, not through the registry:
        # the saved state keeps the real values)

    # ------------------------------------------------------------------
    # status

    def status(self) -> dict:
        io, eng = self.io, self.engine
        stalled = self._stalled_since
        st: dict = {"ready": self.ready.is_set(), "reconnects": self.reconnects,
                    "last_reconnect_s": self.last_reconnect_s, "channels": [c.name for c in self.config.channels],
                    "jack_stalled_s": None if stalled is None else round(time.monotonic() - stalled, 3)}
        if eng is not None:
            st.update({
                "model": eng.model, "backend": eng.backend, "hop": eng.hop, "processing_latency": eng.processing_latency,
                "engine_realtime": eng.realtime,
                "hops": eng.stats.hops, "late_hops": eng.stats.late_hops, "skipped_hops": eng.stats.skipped_hops,
                "stalls": eng.stats.stalls, "hop_time": eng.hop_time_percentiles(), "meters": eng.meters,
                "bad_samples": self.bad_samples,
                "params": {n: p.__dict__ for n, p in zip(eng.names, eng.params)},
            })
        if io is not None and io.client is not None:
            c = io.counters
            cyc = int(c[jackio.CYCLES])
            t = io.timings[:min(cyc, jackio.TIMING_SLOTS)] / 1e9
            period_s = io.period / io.sample_rate
            st.update({
                "sample_rate": io.sample_rate, "period": io.period,
                "latency_frames": io.latency, "latency_ms": round(1000.0 * io.latency / io.sample_rate, 3),
                # totals since start, across reconnects
                "cycles": cyc + self._totals["cycles"],
                "xruns": int(c[jackio.XRUNS]) + self._totals["xruns"],
                "deadline_misses": int(c[jackio.DEADLINE_MISSES]) + self._totals["deadline_misses"],
                "missed_frames": int(c[jackio.MISSED_FRAMES]) + self._totals["missed_frames"],
                "callback_load_p50": round(float(np.percentile(t, 50)) / period_s, 4) if len(t) else 0.0,
                "callback_load_p99": round(float(np.percentile(t, 99)) / period_s, 4) if len(t) else 0.0,
                "callback": io.callback_kind,
                "jack_version": jackio.libjack_version(),
            })
        if self.control is not None:
            st["control"] = {"endpoint": self.control.endpoint, "events": self.control.events_endpoint,
                             "requests": self.control.requests, "errors": self.control.errors}
        st["faults"] = dict(self.faults)
        if self.state is not None:
            st["state"] = {"path": self.state.path, "saves": self.state.saves, "last_error": self.state.last_error}
        return st


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
