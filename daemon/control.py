"""The ZeroMQ control plane: commands on a ROUTER socket, telemetry on PUB.

One thread owns both sockets (ZeroMQ sockets are not thread-safe). It
answers every well-formed request, replies with an error code to every
malformed one (see quietcast.daemon.commands), and never lets a client
crash the daemon or block the audio: commands only touch the registry's
snapshot and queue, and publishing never waits (a slow subscriber loses
its own messages at the high-water mark). The commands that wait for the
daemon's supervisor thread (``blocking``: reload, load_chain) are answered
from a worker thread, one at a time, so ``status`` and the rest never wait
behind them (a rebuild takes seconds; a supervisor waiting for a frozen
jackd, without end).

Endpoints: ``ipc://$RUNTIME_DIRECTORY/control`` and ``.../events`` by
default (socket files mode 0660), or ``tcp://127.0.0.1:PORT``. A tcp bind
to anything but loopback is refused unless CURVE is configured (a server
secret key and a folder of authorised client public keys, made with
``quietcast keys generate``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import stat
import threading
import time
from typing import Any

from quietcast.bridge.errors import ParameterError, Problem, UnknownParameterError

from . import commands as proto
from .errors import ControlError, ControlSetupError, KeyFileError, NotReadyError

log = logging.getLogger("quietcast.control")
#: reload/load_chain requests waiting for the supervisor at most; more are refused (``failed``, busy)
SLOW_MAX = 8

MAX_RATE = 2000.0  # requests a second served, at most
BURST = 200.0


#: the system service's runtime directory (systemd/quietcast.service:
#: RuntimeDirectory=quietcast), where a client that is given no endpoint
#: looks first (a module constant: tests point it elsewhere)
SERVICE_RUNTIME_DIR = "/run/quietcast"
#: the folder of the last fallback, /tmp/quietcast-UID (tests point it elsewhere)
TMP_ROOT = "/tmp"


def runtime_dir() -> str:
    """$RUNTIME_DIRECTORY (systemd), else $XDG_RUNTIME_DIR/quietcast, else
    /tmp/quietcast-UID."""
    d = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if d:
        return d
    x = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(x, "quietcast") if x else os.path.join(TMP_ROOT, f"quietcast-{os.getuid()}")


def default_endpoints() -> tuple[str, str]:
    d = runtime_dir()
    return f"ipc://{os.path.join(d, 'control')}", f"ipc://{os.path.join(d, 'events')}"


def client_endpoint() -> tuple[str, list[str]]:
    """The command endpoint of a client given none: ``(endpoint, what was
    looked at)``.

    With $RUNTIME_DIRECTORY set (a process of the service itself) it is the
    daemon's default and nothing is searched. Otherwise the client's
    environment says little about where the daemon runs (the system
    service binds under /run/quietcast while an operator's shell has
    $XDG_RUNTIME_DIR, or none under sudo, cron or ssh), so the first of
    these control sockets that exists is used: SERVICE_RUNTIME_DIR/control
    (the system service), $XDG_RUNTIME_DIR/quietcast/control (a user
    service or a daemon run from a desktop shell),
    /tmp/quietcast-UID/control (one run without $XDG_RUNTIME_DIR); when
    none exists, the daemon's default for this environment. The list
    names each path looked at, with why it was not used."""
    if os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]:
        return default_endpoints()[0], []
    paths = [os.path.join(SERVICE_RUNTIME_DIR, "control")]
    x = os.environ.get("XDG_RUNTIME_DIR")
    if x:
        paths.append(os.path.join(x, "quietcast", "control"))
    paths.append(os.path.join(TMP_ROOT, f"quietcast-{os.getuid()}", "control"))
    looked: list[str] = []
    for p in dict.fromkeys(paths):
        try:
            st = os.stat(p)
        except PermissionError:
            looked.append(f"{p} (permission denied: is this user in the daemon's group?)")
            continue
        except OSError:
            looked.append(p)
            continue
        if stat.S_ISSOCK(st.st_mode):
            return f"ipc://{p}", looked + [p]
        looked.append(f"{p} (not a socket)")
    return default_endpoints()[0], looked


def is_loopback(endpoint: str) -> bool:
    """ipc:// is local; tcp:// only to 127.0.0.0/8, ::1 or localhost."""
    if endpoint.startswith("ipc://") or endpoint.startswith("inproc://"):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name or a wildcard: not loopback


def endpoint_problems(cfg) -> list[Problem]:
    """Every problem of a [control] config that stops ``quietcast run``
    before it starts (no socket is opened): a non-loopback endpoint without
    CURVE keys, a CURVE secret key file that is missing or is not a secret
    key (read as the client reads its keys: :func:`.client.load_key`), a
    ``curve_clients`` that is not a folder. ``quietcast config check``
    reports the same."""
    d_cmd, d_ev = default_endpoints()
    cmd, ev = cfg.bind or d_cmd, cfg.events or d_ev
    problems: list[Problem] = []
    if not cfg.curve_secret_key:
        for what, e in (("bind", cmd), ("events", ev)):
            if not is_loopback(e):
                problems.append(Problem(
                    f"[control] {what}",
                    f"{e!r} is not a loopback or ipc endpoint: that needs CURVE keys "
                    "([control] curve_secret_key and curve_clients; make them with `quietcast keys generate DIR`)"))
        return problems
    key = cfg.curve_secret_key
    if not os.path.exists(key):
        problems.append(Problem("[control] curve_secret_key", f"{key!r} does not exist"))
    else:
        from .client import load_key

        try:
            load_key(key, "daemon")
        except KeyFileError as e:  # a folder, no key file, a malformed key, a public key
            problems.append(Problem("[control] curve_secret_key", f"{key!r}: {e.problem}"))
    if not cfg.curve_clients or not os.path.isdir(cfg.curve_clients):
        problems.append(Problem("[control] curve_clients",
                                f"{cfg.curve_clients!r} must be a folder of client public keys"))
    return problems


def check_endpoints(cfg) -> tuple[str, str]:
    """The command and event endpoints for a [control] config, or
    ControlSetupError naming every :func:`endpoint_problems` (a
    non-loopback bind without CURVE, a missing key file ...)."""
    problems = endpoint_problems(cfg)
    if problems:
        raise ControlSetupError("; ".join(str(p) for p in problems))
    d_cmd, d_ev = default_endpoints()
    return cfg.bind or d_cmd, cfg.events or d_ev


class ControlServer:
    """Serves the control protocol for a :class:`~quietcast.daemon.service.Daemon`."""

    def __init__(self, daemon, cfg):
        self.daemon = daemon
        self.cfg = cfg
        self.endpoint, self.events_endpoint = check_endpoints(cfg)
        self.meter_hz = cfg.meter_hz
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.requests = 0
        self.errors = 0
        self._last_bad = 0  # the daemon's NaN/Inf input count at the last event.bad_input
        #: the topic prefixes someone subscribes to on the events socket (XPUB tells us)
        self.subscriptions: set[bytes] = set()
        self._meter_names: tuple | None = None  # (subscriptions seen, channel names, the names wanted)
        self.meters_published = 0  # meter.CHANNEL messages sent (a test and a bench read it)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._setup_error: Exception | None = None
        self._auth = None
        #: requests of blocking commands (reload, load_chain) for the worker thread, and its replies
        #: for the control thread to send: the control thread itself never waits for the supervisor
        self._slow: queue.SimpleQueue = queue.SimpleQueue()
        self._replies: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # -- context used by the commands
    @property
    def registry(self):
        return self.daemon.registry

    @property
    def midi(self):
        return self.daemon.midi

    def load_chain(self, channel: str, chain: str) -> dict:
        return self.daemon.load_chain(channel, chain)

    def save_state(self) -> dict:
        return self.daemon.save_state()

    def reload(self) -> dict:
        return self.daemon.reload()

    def emit(self, topic: str, doc: dict) -> None:
        """Queue an event for publishing (any thread); wakes the control
        thread at once, so events do not wait for the next meter tick."""
        self.events.put((topic, doc))
        self._wake()

    # -- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="quietcast-control", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._setup_error is not None:
            raise self._setup_error

    def stop(self) -> None:
        self._stop.set()
        self._slow.put(None)
        if self._thread is not None:
            self._thread.join(5)

    def _work(self) -> None:
        """The worker thread: answers the requests of blocking commands, one
        at a time, in order; the control thread sends the replies."""
        while True:
            item = self._slow.get()
            if item is None:
                return
            envelope, rest, request = item
            try:
                reply = self.handle(rest, request)
            except Exception:  # pragma: no cover - handle() answers every request
                log.exception("could not answer a request")
                continue
            self._replies.put((envelope, reply))
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the thread is awake already

    def _bind(self, sock, endpoint: str) -> None:
        if endpoint.startswith("ipc://"):
            path = endpoint[len("ipc://"):]
            os.makedirs(os.path.dirname(path) or ".", mode=0o750, exist_ok=True)
            if os.path.exists(path):  # a stale socket from a crashed run, unless someone still listens on it
                import socket

                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.settimeout(1.0)
                    probe.connect(path)
                    live = True
                except OSError:
                    live = False
                finally:
                    probe.close()
                if live:
                    raise ControlSetupError(f"control endpoint {endpoint} is in use by a running process (another "
                                            "quietcast daemon?); stop it or give this one another [control] bind")
                os.unlink(path)
        sock.bind(endpoint)
        if endpoint.startswith("ipc://"):
            os.chmod(endpoint[len("ipc://"):], 0o660)

    def _curve(self, ctx, socks) -> None:
        import zmq
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        public, secret = zmq.auth.load_certificate(self.cfg.curve_secret_key)
        if not secret:
            raise ControlSetupError(f"{self.cfg.curve_secret_key}: not a secret key file (use the .key_secret file)")
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=self.cfg.curve_clients)
        for s in socks:
            s.curve_secretkey = secret
            s.curve_publickey = public
            s.curve_server = True

    def _run(self) -> None:
        import zmq

        ctx = zmq.Context.instance()
        router = ctx.socket(zmq.ROUTER)
        # XPUB: a PUB that also hands us each subscribe and unsubscribe (also
        # when a subscriber goes away), so meters nobody asked for are never
        # built: at a thousand channels one tick of them is ~14 ms of the GIL
        pub = ctx.socket(zmq.XPUB)
        try:
            for s in (router, pub):
                s.linger = 0
            router.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # bigger frames: the peer is dropped
            router.setsockopt(zmq.ROUTER_MANDATORY, 0)
            # replies queued for a client that pipelines requests and does not read them (dropped past
            # this): 10,000 2-channel `status` replies are about 16 MB (100,000 before)
            router.sndhwm = 10_000
            # room for a few ticks of every channel's meter besides the events
            pub.sndhwm = 1000 + 4 * len(self.daemon.config.channels)
            if self.cfg.curve_secret_key:
                self._curve(ctx, (router, pub))
            self._bind(router, self.endpoint)
            self._bind(pub, self.events_endpoint)
        except Exception as e:
            self._setup_error = e if isinstance(e, ControlSetupError) else ControlSetupError(f"control socket: {e}")
            self._ready.set()
            router.close(0)
            pub.close(0)
            return
        log.info("control on %s, events on %s%s", self.endpoint, self.events_endpoint,
                 " (CURVE)" if self.cfg.curve_secret_key else "")
        self._ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(pub, zmq.POLLIN)  # subscriptions
        period = 1.0 / self.meter_hz
        next_meter = time.monotonic()
        last_xruns = last_misses = None
        budget, last = float(BURST), time.monotonic()
        try:
            while not self._stop.is_set():
                timeout = max(0.0, next_meter - time.monotonic())
                ready = dict(poller.poll(int(timeout * 1000) + 1))
                if self._wake_r in ready:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                self._send_replies(router)
                if pub in ready:
                    self._take_subscriptions(pub)
                if router in ready:
                    # at most MAX_RATE requests a second: a flood queues in
                    # ZeroMQ (and is dropped at its high-water mark) instead
                    # of taking the CPU and the GIL from the audio threads
                    now = time.monotonic()
                    budget = min(BURST, budget + (now - last) * MAX_RATE)
                    last = now
                    if budget < 1:
                        time.sleep((1 - budget) / MAX_RATE)
                        continue
                    for _ in range(int(budget)):
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        budget -= 1
                        try:
                            self._answer(router, frames)
                        except Exception:  # never let a request end the control thread
                            log.exception("could not answer a request")
                        time.sleep(0)  # hand the GIL over now: the JACK callback may be waiting for it
                self._publish_events(pub)
                now = time.monotonic()
                if now >= next_meter:
                    next_meter = now + period
                    last_xruns, last_misses = self._publish_meters(pub, last_xruns, last_misses)
        finally:
            router.close(0)
            pub.close(0)
            if self._auth is not None:
                self._auth.stop()
            for e in (self.endpoint, self.events_endpoint):
                if e.startswith("ipc://"):
                    try:
                        os.unlink(e[len("ipc://"):])
                    except OSError:
                        pass

    # -- requests
    def _send_replies(self, router) -> None:
        import zmq

        while True:
            try:
                envelope, reply = self._replies.get_nowait()
            except queue.Empty:
                return
            try:
                router.send_multipart(envelope + [proto.dumps(reply)], zmq.NOBLOCK)
            except zmq.ZMQError:  # the peer is gone or not reading: drop
                pass

    @staticmethod
    def _parse(rest: list[bytes]) -> tuple | None:
        """The request ``(id, cmd, args)``, parsed once for both the choice
        of thread and :meth:`handle`; None when malformed (:meth:`handle`
        answers it with its error)."""
        if len(rest) != 1:
            return None
        try:
            return proto.parse_request(rest[0])
        except ControlError:
            return None

    @staticmethod
    def _blocking(request: tuple | None) -> bool:
        """Whether the request is for a blocking command (one that waits for
        the supervisor thread); a malformed one or an unknown command is not
        (it is answered at once, with its error)."""
        cls = proto.commands().get(request[1]) if request is not None else None
        return cls is not None and cls.blocking

    def _answer(self, router, frames: list[bytes]) -> None:
        import zmq

        self.requests += 1
        if len(frames) < 2:
            return  # nothing to answer to
        envelope = [frames[0]]
        rest = frames[1:]
        if rest and rest[0] == b"" and len(rest) > 1:  # a REQ client's delimiter
            envelope.append(b"")
            rest = rest[1:]
        request = self._parse(rest)
        if self._blocking(request):
            # the supervisor may be busy for seconds (a rebuild), or wait for a JACK server that does
            # not answer (a frozen jackd): the worker waits, and this thread answers everything else
            if self._slow.qsize() < SLOW_MAX:
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, name="quietcast-control-worker",
                                                    daemon=True)
                    self._worker.start()
                self._slow.put((envelope, rest, request))
                return
            # a client retrying while the supervisor is stuck: refused now, not run one after another
            # long after their clients gave up (each reload that rebuilds is a dropout)
            self.errors += 1
            reply = proto.reply_error(request[0], "failed",
                                      f"busy: {SLOW_MAX} reload/load_chain requests are already waiting for the "
                                      "daemon (a rebuild, or a JACK server that does not answer); try again later")
        else:
            reply = self.handle(rest, request)
        try:
            router.send_multipart(envelope + [proto.dumps(reply)], zmq.NOBLOCK)
        except zmq.ZMQError:  # the peer is gone or not reading: drop
            pass

    def handle(self, frames: list[bytes], request: tuple | None = None) -> dict:
        """One request (its frames after the envelope) -> the reply;
        ``request``: the frames already parsed (:meth:`_parse`)."""
        id_ = None
        try:
            if request is None:
                if len(frames) != 1:
                    raise ControlError("bad_frame", f"a request is one JSON frame, got {len(frames)} frames")
                request = proto.parse_request(frames[0])
            id_, cmd, args = request
            cls = proto.find(cmd)
            checked = cls.check_args(args)
            return proto.reply_ok(id_, cls().execute(self, checked))
        except ControlError as e:
            self.errors += 1
            if "id" in e.details:
                id_ = e.details["id"]
            det = {k: v for k, v in e.details.items() if k != "id"}
            return proto.reply_error(id_, e.code, e.message, det or None)
        except UnknownParameterError as e:
            self.errors += 1
            return proto.reply_error(id_, "unknown_param", str(e))
        except ParameterError as e:
            self.errors += 1
            return proto.reply_error(id_, "out_of_range", str(e))
        except NotReadyError as e:
            self.errors += 1
            return proto.reply_error(id_, "not_ready", str(e))
        except Exception as e:  # a bug: log it, answer, carry on
            self.errors += 1
            log.exception("internal error answering a request")
            return proto.reply_error(id_, "internal", f"{type(e).__name__}: {e}")

    # -- telemetry
    def _publish(self, pub, topic: str, doc: Any) -> None:
        import zmq

        try:
            pub.send_multipart([topic.encode(), proto.dumps(doc)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _publish_events(self, pub) -> None:
        for _ in range(1000):
            try:
                topic, doc = self.events.get_nowait()
            except queue.Empty:
                return
            self._publish(pub, topic, doc)

    def _take_subscriptions(self, pub) -> None:
        """Read the subscribe (``\\x01TOPIC``) and unsubscribe (``\\x00TOPIC``)
        messages XPUB queued. A plain XPUB passes a topic's first
        subscription and its last unsubscription (also when the last
        subscriber goes away), so a set of topics is exact; counting
        verbose messages is not (a subscriber that subscribes twice is
        unsubscribed once when it disconnects)."""
        import zmq

        subs = self.subscriptions
        for _ in range(10_000):
            try:
                msg = pub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                subs.add(bytes(msg[1:]))
            elif msg[:1] == b"\x00":
                subs.discard(bytes(msg[1:]))

    def _wanted_meters(self, names) -> list[str]:
        """The channels whose ``meter.NAME`` some subscriber's prefix
        matches (recomputed when the subscriptions or the channels change)."""
        key = (tuple(sorted(self.subscriptions)), tuple(names))
        if self._meter_names is None or self._meter_names[0] != key:
            prefixes = key[0]
            want = [n for n in names if any(f"meter.{n}".encode().startswith(p) for p in prefixes)]
            self._meter_names = (key, want)
        return self._meter_names[1]

    def _publish_meters(self, pub, last_xruns, last_misses):
        d = self.daemon
        eng, io = d.engine, d.io
        if eng is not None:
            want = self._wanted_meters(eng.names) if self.subscriptions else []
            if want:
                meters = eng.meters_for(want)
                for k, name in enumerate(want):
                    m = meters.get(name)
                    if m is not None:
                        self._publish(pub, f"meter.{name}", m)
                        self.meters_published += 1
                    if k % 64 == 63:
                        time.sleep(0)  # hand the GIL to the audio threads between batches
            bad = d.bad_samples
            if bad > self._last_bad:
                self._publish(pub, "event.bad_input", {"bad_samples": bad, "new_bad_samples": bad - self._last_bad})
                self._last_bad = bad
        if io is not None and io.client is not None:
            from . import jackio

            x, m = int(io.counters[jackio.XRUNS]), int(io.counters[jackio.DEADLINE_MISSES])
            if last_xruns is not None and (x > last_xruns or m > last_misses):
                self._publish(pub, "event.xrun", {"xruns": x, "deadline_misses": m,
                                                  "new_xruns": x - last_xruns, "new_deadline_misses": m - last_misses})
            return x, m
        return None, None
