"""The exception tree of quietcast.daemon. Each error also inherits the
matching builtin; the CLI turns them into one line and an exit status."""

from __future__ import annotations


class DaemonError(Exception):
    """Base of the daemon's own errors."""


class NotReadyError(DaemonError, RuntimeError):
    """The engine is not running yet (waiting for the JACK server)."""


class ControlError(DaemonError):
    """An error on the control protocol: ``code`` is the wire error code
    (see quietcast.daemon.commands), ``message`` says what and why."""

    def __init__(self, code: str, message: str, details: dict | None = None):
        self.code = code
        self.message = message
        self.details = details or {}
        super().__init__(f"{code}: {message}")


class ControlSetupError(DaemonError, ValueError):
    """The control socket cannot be served as configured (e.g. a
    non-loopback bind without CURVE keys)."""


class KeyFileError(DaemonError, ValueError):
    """A CURVE key file cannot be used: ``role`` is "server" (the daemon's
    public key, given to a client), "client" (this client's secret key) or
    "daemon" (the daemon's own secret key), ``path`` the file, ``problem``
    what is wrong with it."""

    def __init__(self, role: str, path: str, problem: str):
        self.role, self.path, self.problem = role, path, problem
        super().__init__(f"{role} key {path}: {problem}")
