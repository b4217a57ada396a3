"""A small Python client for the daemon's control protocol.

    from quietcast.daemon.client import Client

    with Client() as c:                       # the daemon's ipc socket, found
        print(c.status()["latency_ms"])
        c.set("host.strength", 0.7)
        for topic, msg in c.events(["meter.host"], timeout=5):
            print(topic, msg["rms_out_db"])

Errors come back as :class:`~quietcast.daemon.errors.ControlError` with the
protocol's ``code``; a daemon that does not answer within ``timeout``
raises ``ControlError("timeout", ...)``.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any, Iterator

from . import commands as proto
from .errors import ControlError, KeyFileError


def _decode(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"))


#: the roles whose key file must hold a secret key, and what to say when it holds a public key only
_SECRET_NEEDED = {
    "client": "is a public key (no secret-key line); give this client's secret key file, NAME.key_secret",
    "daemon": "is not a secret key file (use the .key_secret file)",
}


def load_key(path: str, role: str) -> tuple[bytes, bytes | None]:
    """``(public, secret)`` of a CURVE key file made by ``quietcast keys
    generate``. ``role``: "server" (the daemon's public key, given to a
    client), "client" (this client's secret key) or "daemon" (the daemon's
    own secret key, ``[control] curve_secret_key``); the last two must
    hold a secret key. Anything else raises :class:`KeyFileError` saying
    what is wrong (``ctl`` and ``config check`` show it)."""
    import zmq.auth
    from zmq.utils import z85

    path = os.fspath(path)
    if not os.path.exists(path):
        raise KeyFileError(role, path, "no such file")
    if os.path.isdir(path):
        raise KeyFileError(role, path, "is a folder, not a key file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as e:
        raise KeyFileError(role, path, e.strerror or str(e)) from None
    except ValueError:
        raise KeyFileError(role, path, "not a CURVE key file (it has no public-key line; make key pairs with "
                                       "`quietcast keys generate`)") from None
    for k in (public, secret):
        try:
            ok = k is None or (len(k) == 40 and len(z85.decode(k)) == 32)
        except Exception:  # a character outside Z85
            ok = False
        if not ok:
            raise KeyFileError(role, path, "holds a malformed key (a CURVE key is 40 Z85 characters)")
    if role in _SECRET_NEEDED and not secret:
        raise KeyFileError(role, path, _SECRET_NEEDED[role])
    return public, secret


class Client:
    """Talk to a running daemon.

    Args:
        endpoint: command endpoint (default: $QUIETCAST_ENDPOINT, else the
            first control socket that exists among /run/quietcast/control
            (the system service), $XDG_RUNTIME_DIR/quietcast/control and
            /tmp/quietcast-UID/control, else the daemon's default ipc
            socket; see :func:`quietcast.daemon.control.client_endpoint`).
        events_endpoint: PUB endpoint (default: asked from the daemon).
        timeout: seconds to wait for each reply.
        curve_server_key: the server's public key file, for CURVE.
        curve_client_key: this client's secret key file, for CURVE.
    """

    def __init__(self, endpoint: str | None = None, events_endpoint: str | None = None, timeout: float = 5.0,
                 curve_server_key: str | None = None, curve_client_key: str | None = None):
        import zmq

        from .control import client_endpoint

        #: how the endpoint was chosen, for the error of a request nobody answers
        self._origin = ""
        if endpoint:
            self.endpoint = endpoint
        elif os.environ.get("QUIETCAST_ENDPOINT"):
            self.endpoint = os.environ["QUIETCAST_ENDPOINT"]
            self._origin = " (from QUIETCAST_ENDPOINT)"
        else:
            self.endpoint, looked = client_endpoint()
            if looked:
                path = self.endpoint[len("ipc://"):]
                if path in looked:  # a socket file is there, and nobody answers on it (a crashed daemon's)
                    what = f"; it is the first that exists of {', '.join(looked)}; name another endpoint"
                else:
                    what = f"; no control socket at {', '.join(looked)}; name the daemon's endpoint"
                self._origin = what + " with `quietcast ctl -e/--endpoint ENDPOINT` or QUIETCAST_ENDPOINT"
        self._events_endpoint = events_endpoint
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._ctx = zmq.Context.instance()
        if curve_client_key and not curve_server_key:
            raise ValueError("a client key (curve_client_key) needs the server's public key (curve_server_key)")
        # read once, here: a key file that cannot be used is a KeyFileError now, not a zmq error later
        self._curve = ((load_key(curve_server_key, "server")[0], load_key(curve_client_key, "client")
                        if curve_client_key else None) if curve_server_key else None)
        self._sock = self._socket(zmq.DEALER)
        self._sock.connect(self.endpoint)

    def _socket(self, kind):
        import zmq

        s = self._ctx.socket(kind)
        s.linger = 0
        s.sndtimeo = max(1, int(self.timeout * 1000))
        if self._curve is not None:
            server_public, client = self._curve
            public, secret = client if client else zmq.curve_keypair()
            s.curve_serverkey = server_public
            s.curve_publickey = public
            s.curve_secretkey = secret
        return s

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the protocol
    def call(self, cmd: str, **args) -> Any:
        """Send one command and return its result (or raise ControlError)."""
        import zmq

        cls = proto.find(cmd)
        req = cls.message(id=next(self._ids), **args)
        deadline = time.monotonic() + self.timeout
        try:  # blocks while no connection is up (e.g. a refused CURVE handshake)
            self._sock.send(proto.dumps(req))
        except zmq.Again:
            deadline = 0.0
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                # the socket may hold a late reply now: start afresh
                self._sock.close(0)
                self._sock = self._socket(zmq.DEALER)
                self._sock.connect(self.endpoint)
                raise ControlError("timeout", f"no reply from {self.endpoint} within {self.timeout:g} s "
                                              "(is `quietcast run` running? see `systemctl status quietcast`)"
                                              + self._origin)
            rep = _decode(self._sock.recv())
            if rep.get("id") != req["id"]:
                continue  # a late reply to an earlier, timed-out request
            if rep.get("ok"):
                return rep.get("result")
            err = rep.get("error") or {}
            raise ControlError(err.get("code", "internal"), err.get("message", "?"), err.get("details"))

    def status(self) -> dict:
        return self.call("status")

    def list(self, prefix: str = "") -> list:
        return self.call("list", prefix=prefix) if prefix else self.call("list")

    def get(self, address: str) -> Any:
        return self.call("get", address=address)

    def set(self, address: str, value: Any) -> Any:
        return self.call("set", address=address, value=value)

    def bypass(self, channel: str, on: bool | None = None) -> bool:
        return self.call("bypass", channel=channel, on=on)

    def mute(self, channel: str, on: bool | None = None) -> bool:
        return self.call("mute", channel=channel, on=on)

    # -- events
    def events_endpoint(self) -> str:
        if self._events_endpoint is None:
            self._events_endpoint = self.call("subscribe")["endpoint"]
        return self._events_endpoint

    def events(self, topics: list[str] | None = None, timeout: float | None = None) -> Iterator[tuple[str, dict]]:
        """Yield ``(topic, message)`` from the event stream; ``topics`` are
        prefixes ("meter." for all meters); stops after ``timeout`` seconds
        without a message (None: never)."""
        sub = self.subscribe(topics)
        try:
            while True:
                got = sub.next(timeout)
                if got is None:
                    return
                yield got
        finally:
            sub.close()

    def subscribe(self, topics: list[str] | None = None) -> "Subscription":
        """A subscription to the event stream, connected now (so that events
        that follow a command sent after this call are not missed, once the
        subscription has reached the daemon: ZeroMQ takes a few ms)."""
        import zmq

        sub = self._socket(zmq.SUB)
        try:
            sub.connect(self.events_endpoint())
            for t in topics or [""]:
                sub.setsockopt(zmq.SUBSCRIBE, t.encode())
        except BaseException:
            sub.close(0)
            raise
        return Subscription(sub)


class Subscription:
    """An open SUB socket on a daemon's event stream (:meth:`Client.subscribe`)."""

    def __init__(self, sock):
        self._sock = sock

    def next(self, timeout: float | None = None) -> tuple[str, dict] | None:
        """The next ``(topic, message)``, or None after ``timeout`` seconds
        without one (None: wait for ever)."""
        import zmq

        if not self._sock.poll(None if timeout is None else int(timeout * 1000), zmq.POLLIN):
            return None
        topic, raw = self._sock.recv_multipart()[:2]
        return topic.decode(), _decode(raw)

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
