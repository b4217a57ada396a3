"""The daemon's lifecycle: connect to JACK, run the engine, survive jackd
going away, stop cleanly.

Threads:

- main thread (:meth:`Daemon.run`): the supervisor. Builds the engine
  (hosted plugins must be loaded on the main thread), opens the JACK
  client, applies connection rules when ports appear, reconnects when the
  server comes back, handles stop requests.
- engine thread (:meth:`Engine.run`): processes hops.
- JACK's own threads: the process callback (copies only) and the
  notification thread (callbacks that only set events or bump counters).

Signals only set flags (:meth:`Daemon.request_stop`); a second SIGINT
forces an immediate exit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

import numpy as np

from . import jackio
from .engine import Engine

log = logging.getLogger("quietcast")


class Daemon:
    """Runs one configured set of channels in the JACK graph.

    Args:
        config: a loaded daemon config (``jack``, ``engine``, ``channels``).
        server: overrides ``config.jack.server`` when given.
        chains: channel name -> bridge Chain (post-chains already loaded).
    """

    def __init__(self, config: Any, server: str | None = None, chains: dict | None = None,
                 engine_options: dict | None = None):
        self.config = config
        self.server = server if server is not None else config.jack.server
        self.chains = chains or {}
        self.engine_options = engine_options or {}
        self.io: jackio.JackIO | None = None
        self.engine: Engine | None = None
        self._engine_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.ready = threading.Event()  # audio flows and connections are made
        self.reconnects = 0
        self.last_reconnect_s: float | None = None
        self._down_since: float | None = None
        self._sigint = 0
        self.on_ready: list[Callable[["Daemon"], None]] = []
        from .registry import Registry

        self.registry = Registry(self)

    # ------------------------------------------------------------------
    # engine

    def _channel_specs(self):
        class Spec:
            pass

        out = []
        for c in self.config.channels:
            s = Spec()
            for k in ("name", "stems", "strength", "input_gain_db", "output_gain_db", "background_db", "bypass", "mute"):
                setattr(s, k, getattr(c, k))
            s.chain = self.chains.get(c.name, getattr(c, "chain_spec", None))
            out.append(s)
        return out

    def _engine_for(self, sample_rate: int) -> Engine:
        eng = self.engine
        if eng is None or eng.sample_rate != sample_rate:
            e = self.config.engine
            new = Engine(self._channel_specs(), sample_rate, model=e.model, max_attenuation_db=e.max_attenuation_db,
                         safety_ms=e.safety_ms, max_backlog_ms=e.max_backlog_ms, **self.engine_options)
            if eng is not None:  # keep the live parameter values across a rate change
                new.params = eng.params
            new.registry = self.registry
            self.registry.reapply(new)
            self.engine = new
            log.info("engine: %d channel(s) at %d Hz, model %s, processing latency %d frames",
                     new.n, sample_rate, new.model, new.processing_latency)
        return self.engine

    # ------------------------------------------------------------------
    # connecting

    def _try_open(self) -> bool:
        import jack

        cfg = self.config
        io = jackio.JackIO(cfg.jack.client_name, self.server, [c.name for c in cfg.channels],
                           [c.stems for c in cfg.channels], latency=lambda period: 0)
        io._latency_for = lambda period: self._engine_for(io.sample_rate).latency_for_period(period)
        try:
            io.open()
        except (jack.JackError, OSError) as e:
            log.debug("JACK not available: %s", e)
            return False
        self.io = io
        eng = self.engine
        eng.attach(io)
        self._engine_thread = threading.Thread(target=eng.run, name="quietcast-engine", daemon=True)
        self._engine_thread.start()
        self._apply_rules()
        log.info("connected to JACK%s: %d Hz, period %d, latency %d frames (%.1f ms)",
                 f" server {self.server!r}" if self.server else "", io.sample_rate, io.period, io.latency,
                 1000.0 * io.latency / io.sample_rate)
        return True

    def _close_io(self) -> None:
        if self.engine is not None:
            self.engine.stop()
        if self._engine_thread is not None:
            self._engine_thread.join(timeout=5)
            self._engine_thread = None
        if self.io is not None:
            self.io.close()
            self.io = None

    def _apply_rules(self) -> None:
        io = self.io
        if io is None:
            return
        io.ports_changed.clear()
        made = io.apply_rules([c.connect_in for c in self.config.channels], [c.connect_out for c in self.config.channels])
        if made:
            log.info("connected %d port(s) by rule", made)

    # ------------------------------------------------------------------
    # running

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def on_term(signum, frame):
            self.request_stop()

        def on_int(signum, frame):
            self._sigint += 1
            if self._sigint > 1:
                os.write(2, b"quietcast: second interrupt, exiting now\n")
                os._exit(130)
            self.request_stop()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)

    def run(self) -> int:
        """Supervise until stopped. Returns the exit status (0)."""
        interval = self.config.jack.reconnect_interval_ms / 1000.0
        waiting_logged = False
        # the JACK callback needs the GIL every period: hand it over at least
        # every 0.5 ms instead of Python's default 5 ms (a whole period at 256)
        sys.setswitchinterval(0.0005)
        try:
            while not self._stop.is_set():
                io = self.io
                if io is None or not io.alive:
                    if io is not None:
                        log.warning("JACK server went away; reconnecting every %.1f s", interval)
                        self.ready.clear()
                        self._down_since = time.monotonic()
                        self._close_io()
                    if self._try_open():
                        waiting_logged = False
                        if self._down_since is not None:
                            self.reconnects += 1
                            self.last_reconnect_s = time.monotonic() - self._down_since
                            log.info("back after %.2f s", self.last_reconnect_s)
                            self._down_since = None
                        self.ready.set()
                        for cb in self.on_ready:
                            cb(self)
                    else:
                        if not waiting_logged:
                            log.warning("waiting for the JACK server%s", f" {self.server!r}" if self.server else "")
                            waiting_logged = True
                        self._stop.wait(interval)
                        continue
                if self.io.ports_changed.is_set():
                    self._apply_rules()
                if self.io.period_changed.is_set():
                    log.warning("JACK period changed; reopening to re-declare latency")
                    self._close_io()
                    continue
                self._stop.wait(0.05)
        finally:
            self._fade_out()
            final = self.status()
            self._close_io()
            self.ready.clear()
            log.info("final status: %s", json.dumps({k: v for k, v in final.items() if k not in ("meters", "params")},
                                                    default=str))
        return 0

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

    # ------------------------------------------------------------------
    # status

    def status(self) -> dict:
        io, eng = self.io, self.engine
        st: dict = {"ready": self.ready.is_set(), "reconnects": self.reconnects,
                    "last_reconnect_s": self.last_reconnect_s, "channels": [c.name for c in self.config.channels]}
        if eng is not None:
            st.update({
                "model": eng.model, "hop": eng.hop, "processing_latency": eng.processing_latency,
                "hops": eng.stats.hops, "late_hops": eng.stats.late_hops, "skipped_hops": eng.stats.skipped_hops,
                "stalls": eng.stats.stalls, "hop_time": eng.hop_time_percentiles(), "meters": eng.meters,
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
                "cycles": cyc, "xruns": int(c[jackio.XRUNS]), "deadline_misses": int(c[jackio.DEADLINE_MISSES]),
                "missed_frames": int(c[jackio.MISSED_FRAMES]),
                "callback_load_p50": round(float(np.percentile(t, 50)) / period_s, 4) if len(t) else 0.0,
                "callback_load_p99": round(float(np.percentile(t, 99)) / period_s, 4) if len(t) else 0.0,
            })
        return st


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def fmt_latency(frames: int, rate: int) -> str:
    return f"{frames} frames = {1000.0 * frames / rate:.2f} ms" if rate else f"{frames} frames"

