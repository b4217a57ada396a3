"""systemd's notify protocol, spoken natively (no libsystemd).

``sd_notify`` is one datagram to the unix socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace), with
newline-separated ``KEY=VALUE`` lines: ``READY=1``, ``RELOADING=1``,
``STOPPING=1``, ``WATCHDOG=1``, ``STATUS=...``. Outside systemd (no
``$NOTIFY_SOCKET``) every call does nothing.

The watchdog interval comes from ``$WATCHDOG_USEC`` (for this process when
``$WATCHDOG_PID`` is unset or ours); the daemon pings at half of it, and
only while the engine makes progress, so a hung engine gets restarted
even if every other thread is fine.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + addr[1:]) if addr.startswith("@") else addr
        self._sock = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self.sent: list[str] = []

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram. Never raises."""
        if self._sock is None:
            return False
        msg = "\n".join(lines)
        try:
            self._sock.sendto(msg.encode(), self.address)
            self.sent.append(msg)
            del self.sent[:-50]
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={int(time.monotonic() * 1e6)}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text.replace(chr(10), ' ')}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
