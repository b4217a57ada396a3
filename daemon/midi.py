"""MIDI control: controllers move parameters, parameters move controllers.

Ports
-----
- A JACK MIDI input and output, always (when ``[midi] enabled``):
  ``CLIENT-midi-in:in`` (controllers -> quietcast) and
  ``CLIENT-midi-out:out`` (feedback: LEDs, motor faders), on the daemon's
  server. They are python-rtmidi JACK clients held by a small bridge
  process (:data:`_BRIDGE`, one per daemon) that talks to the daemon over
  pipes. Why not in the daemon's process: python-rtmidi calls libjack
  holding the GIL, and the daemon's audio client has Python callbacks
  (process, latency, port registration), so the server ends up waiting
  on a callback that waits on the GIL -- each rtmidi JACK open or close
  then costs a server timeout (an xrun, ~1.5 s) or hangs for good. A
  JACK-Client MIDI client in the daemon would avoid that but add a second
  Python process callback taking the GIL every period next to the audio
  one. The bridge polls rtmidi's input queue rather than using its
  callback: python-rtmidi 1.5's JACK input callback repeats or garbles
  messages in a burst (1000 CCs). The bridge waits for the server when it
  is not there, exits when it goes away, and is started again (at once
  with :meth:`MidiControl.reopen_jack`, else after 1 s, backing off while
  it keeps failing). Connections made to the two ports (by hand, with
  ``jack_connect``) are remembered and made again when the other port
  comes back (a controller unplugged and plugged in again, behind
  a2jmidid or PipeWire) and by a restarted bridge; one taken down while
  both ports exist is forgotten (``status``: ``jack.connections``). The
  bridge looks every 0.25 s; a port that went and came back between two
  looks is told from a disconnection by its client's uuid (new for a
  re-created JACK2 client) and its own (new for a re-created PipeWire
  port). Left: a JACK2 client that re-registers a port of the same name
  within 0.25 s (a2jmidid, a replug faster than USB enumerates). A
  controller connected (again) to the output gets every mapped value.
- Hardware ports through python-rtmidi's ALSA API in the daemon's process
  (no JACK involved), by name: each entry of ``[midi] inputs`` /
  ``outputs`` is matched (case-insensitive, exact name first, else a part
  of it) against the port names rtmidi lists, never by a bare index and
  never interactively. Where the ALSA sequencer is absent (no
  ``/dev/snd/seq``: containers, servers) one warning per port names it
  and says so, and the daemon keeps running on the JACK ports. A port
  that is missing while ALSA works is looked for again every few seconds
  (a USB controller plugged in later).

Threads
-------
Input callbacks only enqueue: rtmidi's ALSA input callback and the
bridge's reader thread put ``(port label, message)`` on a
:class:`queue.SimpleQueue`; the registry listener only puts the changed
address there. One dispatcher thread takes everything off the queue,
applies the mapping (``registry.set(..., source="midi")``), sends feedback
and is the only thread that opens, closes or writes to the ports after
:meth:`MidiControl.start` (writes to the bridge never block: a full pipe
drops the message and counts it). :meth:`MidiControl.stop` puts a
sentinel on the queue and joins it. System exclusive, clock and
active-sensing messages are dropped before they are queued.

Mapping file (TOML)
-------------------
One ``[[map]]`` table per binding::

    [[map]]
    address = "host.strength"   # any registry address, chain stages and plugins included
    type = "cc"                 # cc | note | pitch_bend | nrpn
    channel = 1                 # MIDI channel 1..16
    number = 7                  # CC or note number 0..127 (CC 0..31 with cc14; not for pitch_bend);
                                # nrpn: the parameter number 0..16383 = MSB (CC 99) * 128 + LSB (CC 98)
    curve = "linear"            # linear | db | log   (default: chosen from the parameter, see below)
    min = 0.0                   # value at the controller's minimum (default: the range's low end;
                                # -inf for a dB parameter that allows it: the bottom stop is "off")
    max = 1.0                   # value at the controller's maximum (default: the range's high end)
    button = "toggle"           # bool parameters: toggle | momentary
    takeover = "pickup"         # pickup (soft takeover) | jump
    cc14 = false                # 14-bit CC: number is the MSB controller, number + 32 the LSB;
                                # nrpn: 14-bit data, Data Entry MSB (CC 6) + LSB (CC 38)
    mode = "absolute"           # absolute | relative (an endless encoder: see below)
    encoding = "twos_complement"  # relative only: twos_complement | binary_offset | sign_magnitude
    step = 0.01                 # relative: the part of the travel one tick moves (0 < step <= 1);
                                # nrpn: the part one Data Increment / Decrement moves

Every problem in the file is reported at once (:class:`MidiMapError`, with
"did you mean" hints and, when the registry is given, the registry's own
message for an unknown address). The default ``curve`` is ``db`` for
gain-like dB parameters (unit dB and -inf allowed, or a name with gain /
level / volume / background / ceiling), ``log`` for Hz parameters with a
positive low end, ``linear`` otherwise. One control may drive several
addresses (a gang); the same control and address twice is an error.

Curves (controller position ``p`` = value / 127, or / 16383 for 14-bit CC
and pitch bend):

- ``linear``: ``min + p * (max - min)`` (``min > max`` turns it round).
  An int parameter is rounded; a choice parameter is split into equal zones.
- ``log``: geometric, ``min * (max / min) ** p``, for frequencies
  (``min > 0``): equal travel per octave.
- ``db``: a console fader law. If 0 dB lies inside (min, max), it sits at
  3/4 of the travel and the top quarter is linear in dB from 0 dB to
  ``max``; otherwise ``max`` is the reference at the top. Below the
  reference the fader follows the shape of Ardour's classic fader law
  (``gain_to_slider_position`` = ``((6 log2 g + 192) / 198) ** 8``, which
  puts -10 / -20 / -40 dB at 0.65, 0.41 and 0.15 of the travel to unity):
  ``s = (1 - d / 192) ** 8`` (``d`` = dB below the reference), rescaled so
  that the bottom of travel is ``min`` (spans over 128 dB stretch the
  192); when the parameter allows -inf and ``min`` is not set (or is
  ``-inf``) the bottom stop (0) is -inf ("off").
  For ``output_gain_db`` [-96, +24]: 0 dB at 75 %, +12 dB at 87.5 %,
  about -9.4 dB at 50 %, -24.5 dB at 25 %, -79 dB on the first step above
  the stop. Every curve has an exact inverse, used for feedback and pickup.

Buttons (bool parameters): ``toggle`` flips on every press (CC value >= 64,
note-on with velocity > 0); ``momentary`` follows the button (CC >= 64 /
note-on = on, CC < 64 / note-off = off). Notes drive bool parameters only;
pitch bend drives numbers only.

Soft takeover (``takeover = "pickup"``, the default for numbers): after
the value changes from anywhere else (ZeroMQ, another control, a state
restore) and at start-up, the binding is detached: the control's values
are ignored (counted as ``ignored_pickup``) until it passes through the
current value (crosses it between two messages, or comes within one
7-bit step of it); then it follows. ``jump`` applies every value at once.

Relative (endless) encoders (``mode = "relative"``, type cc only, 7-bit):
each message is a number of ticks, not a position. ``encoding`` says how
(:func:`relative_delta`): ``twos_complement`` (1..63 up, 127..65 down:
a slow turn sends 1 / 127), ``binary_offset`` (around 64: 65.. up, 63..
down) or ``sign_magnitude`` (bit 6 the sign: 1.. up, 65.. down, as
Mackie Control V-Pots send). Which one a surface sends is in its manual
(its "relative 1/2/3" modes); a knob that sends 65 when turned clockwise
is binary offset, counterclockwise sign-magnitude. A tick
moves the value ``step`` of the control's travel (default 0.01: 100
ticks end to end; an int parameter at least one whole number) along the
binding's curve, so a dB parameter moves like its fader; a larger value
(an accelerating encoder) moves that many ticks. It always moves from
the current value, wherever it came from (no soft takeover; ``takeover``
is refused), and stops at the ends of the travel (``min``/``max``). A
choice moves one choice per tick; an on/off parameter turns on clockwise
and off counterclockwise. Steps finer than an int's whole numbers add
up while the value stays where the encoder left it. The LED ring gets
the absolute position on the same CC (what surfaces whose rings follow
their own CC take; a Mackie Control surface's rings listen elsewhere and
are not driven), after every tick too, and again at an end. A
value equal to a ring position sent to that encoder in the last
:data:`ECHO_RELATIVE_S` is taken as its echo (a surface or soft thru
that sends back what it gets: taken as ticks it would move the value
for ever), once per message sent. Learn binds absolute: for an encoder,
add ``mode`` and ``encoding`` to the entry it wrote and reload. One
control is either relative or absolute in every binding it has.

14-bit CC: the MSB (CC n) resets the LSB to 0 and is applied, the LSB
(CC n + 32) refines it (the MIDI 1.0 rule, so a fader moving up never
goes backwards).

NRPN (``type = "nrpn"``, as broadcast consoles such as Allen & Heath's
and some Yamaha and Roland desks send and expect): CC 99 (MSB) and CC 98
(LSB) select parameter ``number`` = MSB * 128 + LSB on the channel (the
one form: there is no ``number_msb`` / ``number_lsb``; the parser says
what to write instead); then Data Entry sets it: CC 6 alone (7-bit), or
with ``cc14 = true`` CC 6 (MSB, which resets the LSB and is applied) and
CC 38 (LSB, which refines it), exactly as a 14-bit CC, with the same
curves and soft takeover. The selection stays until another one (data
may come without a new select); an RPN select (CC 101/100) deselects it,
and the null RPN (127/127) leaves nothing selected. Data Increment
(CC 96) / Decrement (CC 97) move the selected parameter by ``step`` of the
travel (default: one step of its data, 1/127 or 1/16383 with cc14; an int
parameter at least one whole number) from wherever it is, stop at the
ends, and send the console the new value; their data byte is not an
amount (MIDI 1.0). After a step a fader with soft takeover picks the
value up again. An on/off parameter is a button: data entry MSB >= 64
presses (toggle) or holds (momentary) it, a 14-bit one's LSB is ignored,
increment turns it on and decrement off. One parameter number on one
channel is 7- or 14-bit in every binding it has.
State is per channel and tracked on every channel, but CCs 6, 38, 96,
97, 98, 99, 100 and 101 are NRPN's only on a channel that has an NRPN
binding: there, they never reach plain CC bindings, and a plain CC
binding on one of them (a 14-bit CC 6 included: its LSB is 38) is a
mapping error; on other channels they are plain CCs as before.

Feedback: when a mapped value changes, the mapped CC / note is sent on
the JACK MIDI output and every hardware output (14-bit: MSB then LSB;
NRPN: the whole sequence every time, CC 99, 98, 6 and, 14-bit, 38;
bools: 127 / 0, notes as note-on with velocity 127 or 0, which Mackie-style
surfaces read as LED on / off) -- except to a fader or knob whose own
message made the change (a relative encoder does get it: its ring) (an echo would fight the hand on a motor fader);
buttons always get their LED state. A message equal to the feedback just
sent to its control (within 0.5 s; 0.1 s for a relative encoder, see above) is that feedback coming back from a
surface or a soft thru that echoes, not a move or a press, and is ignored (an NRPN's echoed
sequence is followed as one: its data is the echo, and the selection the controller had made is put
back after it, for a console that sends data without selecting again). :meth:`MidiControl.start` sends the
current value of every binding once.

MIDI learn: :meth:`MidiControl.learn` arms one address; the next CC,
note-on, pitch bend or NRPN on any input is bound to it with the defaults above
(a CC n < 32 followed within 0.1 s by CC n + 32 is learned as 14-bit, and
so is a CC n in 32..63, a 14-bit LSB sent alone, followed by CC n - 32;
CC 99 / 98 start an NRPN: learn waits up to 1 s for its data and binds
that NRPN, 14-bit when CC 38 follows the CC 6 within 0.1 s (or comes
first), never CC 99 as a plain CC; data entry for an NRPN selected before
learn was armed is learned as that NRPN; RPN selects and their data are
passed over, and so are CCs 6, 38 and 96..101 on a channel with NRPN
bindings; learning an NRPN removes plain CC bindings on those CCs of its
channel, with a note),
replacing any binding of that address and any binding of that control, and
the mapping file is rewritten atomically (temp file, fsync, rename). Learn
rewrites the file from the bindings, so comments in it are not kept.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from quietcast.bridge.errors import ParameterError, Problem, ProblemsError, did_you_mean, parse_toml, read_utf8
from quietcast.bridge.params import Param
from quietcast.models.common import atomic_write

from .state import default_state_dir

__all__ = [
    "MidiControl", "MidiMapError", "Binding", "Learn", "Curve",
    "load_mapping", "parse_mapping", "mapping_path", "mapping_to_toml", "default_curve",
    "TYPES", "CURVES", "BUTTONS", "TAKEOVERS", "MODES", "ENCODINGS", "relative_delta",
]

log = logging.getLogger("quietcast.midi")

TYPES = ("cc", "note", "pitch_bend", "nrpn")
CURVES = ("linear", "db", "log")
BUTTONS = ("toggle", "momentary")
TAKEOVERS = ("pickup", "jump")
MODES = ("absolute", "relative")
ENCODINGS = ("twos_complement", "binary_offset", "sign_magnitude")
KEYS = ("address", "type", "channel", "number", "curve", "min", "max", "button", "takeover", "cc14",
        "mode", "encoding", "step")
#: a relative encoder's default travel per tick: 1 % of the fader's travel (100 ticks end to end)
RELATIVE_STEP = 0.01
#: NRPN parameter numbers: 14-bit, CC 99 (MSB) * 128 + CC 98 (LSB)
NRPN_MAX = 16383
#: the controllers that carry (N)RPNs: NRPN select 99/98, RPN select 101/100, data entry 6/38,
#: data increment/decrement 96/97. On a channel with an NRPN binding they belong to NRPN
NRPN_CCS = frozenset((6, 38, 96, 97, 98, 99, 100, 101))

#: seconds between looks for hardware ports that were missing (ALSA present)
HARDWARE_RETRY_S = 5.0
#: an incoming value equal to the feedback sent to that control this recently is its echo, not a move
ECHO_S = 0.5
#: the same for a relative encoder, whose ticks may equal a ring position just sent: shorter (an echo
#: through JACK and back takes ~5 ms), so that a hand's tick is seldom taken for one
ECHO_RELATIVE_S = 0.1
#: feedback messages a binding keeps waiting for their echo at most (automation sends many)
_INFLIGHT_MAX = 64
#: how long learn waits for the LSB (CC n + 32) after CC n to call it 14-bit
CC14_LEARN_WINDOW_S = 0.1
#: how long learn waits at most for the MSB of a CC 32..63 that keeps coming alone (14-bit LSBs)
CC14_LSB_LEARN_MAX_S = 1.0
#: how long learn waits after an NRPN select (CC 99/98) for its data entry (CC 6, 38, 96 or 97)
NRPN_LEARN_MAX_S = 1.0
_FADER_K = 192.0  # dB span of the taper below the reference (Ardour's law)
_GAINLIKE = ("gain", "level", "volume", "background", "ceiling")

#: seconds before starting the JACK MIDI bridge again after it stopped (doubles while
#: it keeps failing at once, up to JACK_RETRY_MAX_S)
JACK_RETRY_S = 1.0
JACK_RETRY_MAX_S = 60.0
#: how long start() waits for the JACK MIDI ports to exist
JACK_READY_S = 10.0


class MidiMapError(ProblemsError):
    """The MIDI mapping file is invalid. ``.problems`` holds every problem
    found; ``.source`` names the file."""

    default_source = "midi mapping"


# --------------------------------------------------------------------------
# bindings and curves


@dataclass(frozen=True)
class Binding:
    """One ``[[map]]`` entry. ``channel`` is 1..16 as printed on devices;
    ``min``/``max``/``curve`` None mean "from the parameter"."""

    address: str
    type: str = "cc"
    channel: int = 1
    number: int = 0
    curve: str | None = None
    min: float | None = None
    max: float | None = None
    button: str = "toggle"
    takeover: str = "pickup"
    cc14: bool = False
    mode: str = "absolute"
    encoding: str = "twos_complement"
    step: float | None = None

    @property
    def relative(self) -> bool:
        return self.mode == "relative"

    @property
    def control(self) -> tuple[str, int, int]:
        """``(type, channel 0..15, number)``; pitch bend has number 0; an
        NRPN's number is its 14-bit parameter number."""
        return (self.type, self.channel - 1, 0 if self.type == "pitch_bend" else self.number)

    @property
    def lsb_control(self) -> tuple[str, int, int] | None:
        """The control of a 14-bit CC's low half (CC n + 32), else None."""
        return ("cc", self.channel - 1, self.number + 32) if self.cc14 and self.type == "cc" else None

    @property
    def steps(self) -> int:
        return 16383 if (self.cc14 or self.type == "pitch_bend") else 127

    def describe_control(self, mode: bool = True) -> str:
        if self.type == "pitch_bend":
            return f"pitch bend on channel {self.channel}"
        if self.type == "nrpn":
            return f"NRPN {self.number}{' (14-bit)' if self.cc14 else ''} on channel {self.channel}"
        if self.cc14:
            what = f"CC {self.number}/{self.number + 32} (14-bit)"
        else:
            what = f"{'CC' if self.type == 'cc' else 'note'} {self.number}"
            if self.relative and mode:
                what += f" (relative, {self.encoding})"
        return f"{what} on channel {self.channel}"

    def to_dict(self) -> dict:
        """The ``[[map]]`` table (keys left at their defaults are omitted,
        except address, type, channel, number and curve)."""
        d: dict[str, Any] = {"address": self.address, "type": self.type, "channel": self.channel}
        if self.type != "pitch_bend":
            d["number"] = self.number
        if self.curve is not None:
            d["curve"] = self.curve
        if self.min is not None:
            d["min"] = self.min
        if self.max is not None:
            d["max"] = self.max
        if self.button != "toggle":
            d["button"] = self.button
        if self.takeover != "pickup":
            d["takeover"] = self.takeover
        if self.cc14:
            d["cc14"] = True
        if self.relative:
            d["mode"] = self.mode
            d["encoding"] = self.encoding
        if self.step is not None:
            d["step"] = self.step
        return d

    @property
    def cc_numbers(self) -> frozenset:
        """The CC numbers this (plain CC) binding listens on."""
        if self.type != "cc":
            return frozenset()
        return frozenset((self.number, self.number + 32) if self.cc14 else (self.number,))


def relative_delta(encoding: str, value: int) -> int:
    """The ticks a relative (endless) encoder's CC value stands for:
    positive clockwise, 0 for no move.

    - ``twos_complement``: 1..63 up, 127..65 down (127 = -1), 64 = -64;
    - ``binary_offset``: around 64: 65.. up, 63.. down (64 + n);
    - ``sign_magnitude``: bit 6 is the sign: 1..63 up, 65..127 down (65 = -1).
    """
    if encoding == "twos_complement":
        return value - 128 if value >= 64 else value
    if encoding == "binary_offset":
        return value - 64
    if encoding == "sign_magnitude":
        return -(value & 0x3F) if value & 0x40 else value & 0x3F
    raise ValueError(f"unknown relative encoding {encoding!r}; one of {', '.join(ENCODINGS)}")


def default_curve(p: Param) -> str:
    """The curve learn picks (and a ``[[map]]`` without ``curve`` gets)."""
    if p.kind not in ("float", "int"):
        return "linear"
    if p.unit == "dB" and (p.allow_neg_inf or any(w in p.name for w in _GAINLIKE)):
        return "db"
    if p.unit == "Hz" and p.lo is not None and p.lo > 0 and p.hi is not None:
        return "log"
    return "linear"


class Curve:
    """Controller position ``p`` in [0, 1] <-> parameter value, for one
    binding on one parameter (see the module docstring for the laws).

    ``lo``/``hi`` are the values at p = 0 and p = 1 (``lo`` finite; with
    ``bottom_inf`` the bottom stop itself is -inf)."""

    def __init__(self, kind: str, lo: float, hi: float, bottom_inf: bool = False):
        self.kind, self.lo, self.hi, self.bottom_inf = kind, float(lo), float(hi), bottom_inf
        if kind == "log" and not (lo > 0 and hi > 0):
            raise ValueError("the log curve needs min and max above 0")
        if kind == "db":
            if not lo < hi:
                raise ValueError("the db curve needs min below max")
            self.ref = 0.0 if lo < 0.0 < hi else hi
            self.p_ref = 0.75 if self.ref < hi else 1.0
            self.k = max(_FADER_K, 1.5 * (self.ref - lo))
            self.s_lo = self._s(self.ref - lo)

    def _s(self, d: float) -> float:
        return (1.0 - d / self.k) ** 8

    def value(self, p: float) -> float:
        p = min(1.0, max(0.0, p))
        if self.bottom_inf and p == 0.0:
            return -math.inf
        lo, hi = self.lo, self.hi
        if self.kind == "linear":
            return lo + p * (hi - lo)
        if self.kind == "log":
            return lo * (hi / lo) ** p
        # db
        if p >= self.p_ref:
            return hi if self.p_ref >= 1.0 else self.ref + (p - self.p_ref) / (1.0 - self.p_ref) * (hi - self.ref)
        s = self.s_lo + (p / self.p_ref) * (1.0 - self.s_lo)
        return self.ref - self.k * (1.0 - s ** 0.125)

    def position(self, v: float) -> float:
        """The inverse: where the control stands for value ``v`` (clipped
        to [0, 1]; -inf is 0)."""
        if v == -math.inf:
            return 0.0
        lo, hi = self.lo, self.hi
        if self.kind == "linear":
            p = 0.0 if hi == lo else (v - lo) / (hi - lo)
        elif self.kind == "log":
            p = 0.0 if v <= 0 else math.log(v / lo) / math.log(hi / lo)
        elif v >= self.ref:
            p = 1.0 if hi <= self.ref else self.p_ref + (1.0 - self.p_ref) * (v - self.ref) / (hi - self.ref)
        else:
            d = min(self.ref - v, self.ref - lo)
            p = self.p_ref * (self._s(d) - self.s_lo) / (1.0 - self.s_lo)
        return min(1.0, max(0.0, p))


def _curve_for(b: Binding, p: Param) -> Curve:
    """The binding's curve on parameter ``p`` (raises ValueError)."""
    kind = b.curve or default_curve(p)
    bottom_inf = False
    lo = b.min if b.min is not None else p.lo
    hi = b.max if b.max is not None else p.hi
    if lo is not None and lo == -math.inf:
        bottom_inf, lo = True, p.lo
    elif b.min is None and p.allow_neg_inf and kind == "db":
        bottom_inf = True
    if lo is None or hi is None:
        raise ValueError(f"the parameter has no {'low' if lo is None else 'high'} end: set min and max")
    return Curve(kind, lo, hi, bottom_inf)


# --------------------------------------------------------------------------
# the mapping file


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_entry(raw: Any, i: int, registry, problems: list[Problem]) -> Binding | None:
    where = f"[[map]] {i + 1}"
    if not isinstance(raw, dict):
        problems.append(Problem(where, f"must be a table of keys, got {type(raw).__name__} {raw!r}"))
        return None
    n0 = len(problems)
    addr = raw.get("address")
    if isinstance(addr, str) and addr:
        where = f"[[map]] {i + 1} ({addr})"

    def bad(key: str, msg: str) -> None:
        problems.append(Problem(f"{where} {key}", msg))

    for k in raw:
        if k in ("number_msb", "number_lsb", "msb", "lsb", "nrpn"):
            hi, lo = raw.get("number_msb", raw.get("msb")), raw.get("number_lsb", raw.get("lsb"))
            whole = (f" (here number = {hi * 128 + lo})" if all(isinstance(x, int) and not isinstance(x, bool)
                                                               and 0 <= x <= 127 for x in (hi, lo)) else "")
            bad(k, 'unknown key: an NRPN is type = "nrpn" with its whole parameter number, '
                   f"number = MSB * 128 + LSB (CC 99 * 128 + CC 98, 0..{NRPN_MAX}){whole}; keys: {', '.join(KEYS)}")
        elif k not in KEYS:
            bad(k, f"unknown key{did_you_mean(k, KEYS)}; keys: {', '.join(KEYS)}")
    param = None
    if "address" not in raw:
        bad("address", 'missing (required): e.g. address = "host.strength"')
    elif not isinstance(addr, str) or not addr:
        bad("address", f"value {addr!r} is not an address like 'host.strength' or 'host.chain.comp.threshold_db'")
    elif registry is not None:
        try:
            param = registry.resolve(addr)[2]
        except ParameterError as e:
            bad("address", str(e)[len(addr) + 2:] if str(e).startswith(addr + ": ") else str(e))
    vals: dict[str, Any] = {}

    def choice(key: str, options: tuple, default: Any) -> Any:
        v = raw.get(key, default)
        if v is not default and v not in options:
            bad(key, f"value {v!r} is not one of {', '.join(options)}{did_you_mean(str(v), options)}")
            return default
        return v

    typ = choice("type", TYPES, "cc")
    vals["type"] = typ
    ch = raw.get("channel", 1)
    if not (isinstance(ch, int) and not isinstance(ch, bool)) or not 1 <= ch <= 16:
        bad("channel", f"value {ch!r} is not a MIDI channel: an integer 1..16")
        ch = 1
    vals["channel"] = ch
    cc14 = raw.get("cc14", False)
    if not isinstance(cc14, bool):
        bad("cc14", f"value {cc14!r} is not a boolean (true or false)")
        cc14 = False
    if cc14 and typ not in ("cc", "nrpn"):
        bad("cc14", f"14-bit applies to type = \"cc\" or \"nrpn\" only, not {typ!r}")
        cc14 = False
    vals["cc14"] = cc14
    if typ == "pitch_bend":
        if "number" in raw:
            bad("number", "pitch bend has no number: remove it (a channel has one pitch bend)")
        vals["number"] = 0
    elif "number" not in raw:
        what = {"cc": "the CC number 0..127", "note": "the note number 0..127",
                "nrpn": f"the NRPN parameter number 0..{NRPN_MAX} (MSB * 128 + LSB)"}[typ]
        bad("number", f"missing (required for type = {typ!r}): {what}")
    else:
        num = raw["number"]
        top = NRPN_MAX if typ == "nrpn" else 31 if cc14 else 127
        if not (isinstance(num, int) and not isinstance(num, bool)) or not 0 <= num <= top:
            if typ == "nrpn":
                why = " (the NRPN parameter number: CC 99 (MSB) * 128 + CC 98 (LSB))"
            else:
                why = " (14-bit: the MSB controller 0..31; its LSB is number + 32)" if cc14 else ""
            bad("number", f"value {num!r} is not an integer 0..{top}{why}")
        else:
            vals["number"] = num
    curve = raw.get("curve")
    if curve is not None and curve not in CURVES:
        bad("curve", f"value {curve!r} is not one of {', '.join(CURVES)}{did_you_mean(str(curve), CURVES)}")
        curve = None
    vals["curve"] = curve
    for key in ("min", "max"):
        if key in raw:
            v = raw[key]
            if not _is_number(v) or math.isnan(v) or v == math.inf or (v == -math.inf and key == "max"):
                bad(key, f"value {v!r} is not a number{' (only min may be -inf)' if v == -math.inf else ''}")
            else:
                vals[key] = float(v)
    button = choice("button", BUTTONS, "toggle")
    vals["button"] = button
    vals["takeover"] = choice("takeover", TAKEOVERS, "pickup")
    mode = choice("mode", MODES, "absolute")
    vals["mode"] = mode
    relative = mode == "relative"
    if "encoding" in raw:
        if not relative and raw.get("mode") in (None, "absolute"):
            bad("encoding", 'applies to mode = "relative" only (how an endless encoder sends its steps); '
                            f"add mode = \"relative\" or remove it; encodings: {', '.join(ENCODINGS)}")
        else:
            vals["encoding"] = choice("encoding", ENCODINGS, "twos_complement")
    stepped = relative or typ == "nrpn"  # an encoder's tick, an NRPN's Data Increment / Decrement
    if "step" in raw:
        st = raw["step"]
        if not _is_number(st) or math.isnan(st) or not 0 < st <= 1:
            what = ("one Data Increment / Decrement (CC 96 / 97) moves (default: one step of the data, "
                    "1/127 or 1/16383 with cc14)" if typ == "nrpn" else
                    f"one encoder tick moves (default {RELATIVE_STEP:g})")
            bad("step", f"value {st!r} is not a number in (0, 1]: the part of the control's travel {what}")
        elif not stepped and raw.get("mode") in (None, "absolute"):
            bad("step", 'applies to mode = "relative" only (the travel of one encoder tick), and to type = "nrpn" '
                        '(the travel of one Data Increment / Decrement); add mode = "relative" or remove it')
        else:
            vals["step"] = float(st)
    if relative:
        if typ != "cc":
            bad("mode", f'relative (an endless encoder) applies to type = "cc" only, not {typ!r}; modes: '
                        f"{', '.join(MODES)}")
        if cc14 and typ == "cc":
            bad("cc14", 'a relative encoder sends 7-bit steps: remove cc14 or mode = "relative"')
        if "takeover" in raw:
            bad("takeover", 'does not apply to mode = "relative": an encoder always moves the value from where it '
                            'is (no soft takeover needed); remove it')
        if "button" in raw:
            bad("button", 'does not apply to mode = "relative": an encoder turns an on/off parameter on '
                          'clockwise and off counterclockwise; remove it')

    # against the parameter
    if param is not None:
        kind = param.kind
        if kind in ("str", "dict"):
            bad("address", f"a {kind} parameter cannot be driven by MIDI")
        elif kind == "bool":
            if typ == "pitch_bend":
                bad("type", f"{addr!r} is on/off: map a button (cc or note), not pitch bend")
            for key in ("min", "max", "curve"):
                if key in raw:
                    bad(key, f"{addr!r} is on/off (bool): {key} does not apply; use button = \"toggle\" or \"momentary\"")
            if relative and "step" in raw:
                bad("step", f"{addr!r} is on/off (bool): a relative encoder turns it on clockwise and off "
                            "counterclockwise; remove step")
            elif typ == "nrpn" and "step" in raw:
                bad("step", f"{addr!r} is on/off (bool): Data Increment (CC 96) turns it on and Data Decrement "
                            "(CC 97) off; remove step")
        else:
            if typ == "note":
                bad("type", f"{addr!r} is a {kind} with range {param.range_text()}: a note can only drive an on/off "
                            "parameter; map a cc (fader, knob), an nrpn or pitch_bend")
            if raw.get("button") in BUTTONS:  # (an unknown value is reported once, above)
                bad("button", f"applies to on/off (bool) parameters only; {addr!r} is a {kind}")
            if kind == "choice" and ("min" in raw or "max" in raw or curve not in (None, "linear")):
                bad("curve", f"{addr!r} is a choice ({param.range_text()}): the control is split into equal zones; "
                             "remove curve, min and max")
            if kind == "choice" and stepped and "step" in raw:
                how = "a Data Increment / Decrement" if typ == "nrpn" else "a relative encoder"
                bad("step", f"{addr!r} is a choice ({param.range_text()}): {how} moves one choice "
                            "per tick; remove step")
            elif kind in ("float", "int"):
                _check_range(raw, vals, param, addr, bad)
    if len(problems) > n0 or "number" not in vals:
        return None
    return Binding(address=addr, **vals)


def _check_range(raw: dict, vals: dict, p: Param, addr: str, bad: Callable[[str, str], None]) -> None:
    lo = vals.get("min", p.lo)
    hi = vals.get("max", p.hi)
    for key, v in (("min", vals.get("min")), ("max", vals.get("max"))):
        if v is None:
            continue
        if v == -math.inf:
            if not p.allow_neg_inf:
                bad(key, f"value -inf is out of range {p.range_text()} of {addr!r}")
            continue
        if (p.lo is not None and v < p.lo) or (p.hi is not None and v > p.hi):
            bad(key, f"value {v:g} is out of range {p.range_text()} of {addr!r}")
            return
    if lo is None or hi is None:
        end = "low" if lo is None else "high"
        bad("min" if lo is None else "max", f"{addr!r} has no {end} end ({p.range_text()}): set min and max")
        return
    curve = vals.get("curve") or default_curve(p)
    if lo == hi:
        bad("max", f"min and max are both {lo:g}: the control would do nothing")
    elif curve == "log":
        low = p.lo if lo == -math.inf else lo
        if not (low > 0 and hi > 0):
            bad("curve", f"log needs min and max above 0 (here {lo:g} .. {hi:g}); use linear")
    elif curve == "db" and not (lo < hi):
        bad("max", f"the db curve needs min below max (here {lo:g} .. {hi:g})")


def parse_mapping(text: str, source: str = "midi mapping", registry=None) -> list[Binding]:
    """Check mapping TOML text; every problem at once as a
    :class:`MidiMapError`. With ``registry`` the addresses and ranges are
    checked against the running daemon's parameters."""
    doc = parse_toml(text, source, MidiMapError)
    problems: list[Problem] = []
    for k in doc:
        if k != "map":
            problems.append(Problem(k, f"unknown key at the top level{did_you_mean(k, ('map',))}: write each "
                                       "binding under a [[map]] line"))
    entries = doc.get("map", [])
    if isinstance(entries, dict):
        problems.append(Problem("[map]", "write each binding under [[map]] (double brackets), not [map]"))
        entries = [entries]
    elif not isinstance(entries, list):
        problems.append(Problem("map", f"must be an array of tables ([[map]]), got {type(entries).__name__}"))
        entries = []
    out: list[Binding] = []
    entry_no: dict[int, int] = {}  # id(binding) -> its [[map]] number
    for i, raw in enumerate(entries):
        b = _check_entry(raw, i, registry, problems)
        if b is not None:
            out.append(b)
            entry_no[id(b)] = i + 1
    # conflicts between entries
    seen: dict[tuple, int] = {}
    lsb_of: dict[tuple, int] = {}
    for i, b in enumerate(out):
        key = (b.control, b.address)
        if key in seen:
            problems.append(Problem(f"[[map]] ({b.address})", f"{b.describe_control()} is mapped to it twice"))
        seen[key] = i
        if b.lsb_control is not None:
            lsb_of[b.lsb_control] = i
    modes: dict[tuple, Binding] = {}
    for b in out:
        first = modes.setdefault(b.control, b)
        if first.relative != b.relative or (b.relative and first.encoding != b.encoding):
            def how(x: Binding) -> str:
                return f"relative ({x.encoding})" if x.relative else "absolute"
            problems.append(Problem(f"[[map]] ({b.address}) mode",
                                    f"{b.describe_control(mode=False)} is {how(b)} here but {how(first)} for "
                                    f"{first.address!r}: one control sends one kind of value; give both the same "
                                    "mode and encoding"))
    for b in out:
        if not b.cc14 and b.control in lsb_of:
            other = out[lsb_of[b.control]]
            problems.append(Problem(f"[[map]] ({b.address})", f"{b.describe_control()} is the LSB of the 14-bit "
                                                               f"control of {other.address!r}"))
    # NRPN: one parameter number sends one resolution; CCs 6, 38, 96..101 on its channel are NRPN's
    nrpn_first: dict[tuple, Binding] = {}
    nrpn_channels: dict[int, Binding] = {}
    for b in out:
        if b.type != "nrpn":
            continue
        nrpn_channels.setdefault(b.channel, b)
        first = nrpn_first.setdefault(b.control, b)
        if first.cc14 != b.cc14:
            def res(x: Binding) -> str:
                return "14-bit (cc14 = true)" if x.cc14 else "7-bit"
            problems.append(Problem(f"[[map]] {entry_no[id(b)]} ({b.address}) cc14",
                                    f"NRPN {b.number} on channel {b.channel} is {res(b)} here but {res(first)} for "
                                    f"{first.address!r}: one parameter sends one kind of value; give both the "
                                    "same cc14"))
    for b in out:
        taken = sorted(b.cc_numbers & NRPN_CCS)
        if b.channel in nrpn_channels and taken:
            other = nrpn_channels[b.channel]
            problems.append(Problem(f"[[map]] {entry_no[id(b)]} ({b.address}) number",
                                    f"{b.describe_control()} belongs to NRPN: channel {b.channel} has NRPN "
                                    f"bindings (e.g. {other.describe_control()} for {other.address!r}), and CCs 6, 38 "
                                    "and 96..101 on it are NRPN data entry, increment / decrement and select; use "
                                    "another CC or channel"))
    if problems:
        raise MidiMapError(problems, source)
    return out


def load_mapping(path: str | os.PathLike, registry=None) -> list[Binding]:
    """Read and check a mapping file; a missing file is no bindings."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return []
    return parse_mapping(read_utf8(path, "mapping file", MidiMapError), source=path, registry=registry)


def mapping_path(config) -> str:
    """The mapping file of a daemon running ``config`` (a full daemon
    :class:`~quietcast.daemon.config.Config`): ``[midi] mapping``, else
    ``midi.toml`` in the state directory (the state file's folder when
    ``[state] file`` is set, else :func:`~quietcast.daemon.state.default_state_dir`)."""
    if config.midi.mapping:
        return config.midi.mapping
    st = config.state
    folder = os.path.dirname(st.file) if st.enabled and st.file else default_state_dir()
    return os.path.join(folder, "midi.toml")


def mapping_to_toml(bindings: list[Binding]) -> str:
    from .config import to_toml

    head = ("# quietcast MIDI mapping (see quietcast.daemon.midi): one [[map]] per binding.\n"
            "# MIDI learn rewrites this file from the bindings; comments are not kept.\n\n")
    return head + (to_toml({"map": [b.to_dict() for b in bindings]}) if bindings else "")


def _write_atomic(path: str, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


# --------------------------------------------------------------------------
# runtime state of one binding


class _Bound:
    """A binding with its resolved parameter, curve and takeover state.
    Touched by the dispatcher thread only."""

    def __init__(self, spec: Binding, registry):
        self.spec = spec
        self.registry = registry
        self.param: Param | None = None
        self.curve: Curve | None = None
        self.attached = spec.takeover == "jump" or spec.relative  # an encoder moves from the value: never detached
        self.last_raw: int | None = None
        self.msb = 0  # 14-bit CC: the last MSB
        #: feedback sent lately, (raw, monotonic time), each awaiting its possible echo (several may be
        #: in flight: a script's quick on/off, automation); a real move or press clears it
        self.inflight: list[tuple[int, float]] = []
        #: relative: (position on the travel, the value it gave), so that steps finer than an int
        #: parameter's whole numbers add up
        self.rel: tuple[float, Any] | None = None

    def live_feedback(self, window: float, now: float | None = None) -> list[tuple[int, float]]:
        """The feedback sent within ``window`` seconds, oldest first (a new list)."""
        now = time.monotonic() if now is None else now
        return [e for e in self.inflight if now - e[1] < window]

    def refresh(self) -> Param:
        """Resolve the address again (a reloaded chain may change ranges)."""
        p = self.registry.resolve(self.spec.address)[2]
        if p != self.param:
            self.param = p
            self.curve = _curve_for(self.spec, p) if p.kind in ("float", "int") else None
        return p

    @property
    def numeric(self) -> bool:
        return self.param is not None and self.param.kind in ("float", "int")

    def value_for(self, raw: int) -> Any:
        return self.value_at(raw / self.spec.steps)

    def value_at(self, pos: float) -> Any:
        p = self.param
        if p.kind == "choice":
            n = len(p.choices)
            return p.choices[min(n - 1, int(pos * n))]
        v = self.curve.value(pos)
        if v != -math.inf:
            if p.lo is not None:
                v = max(v, p.lo)
            if p.hi is not None:
                v = min(v, p.hi)
            if p.kind == "int":
                v = int(round(v))
        return v

    @property
    def rel_step(self) -> float:
        """A relative encoder's travel per tick: ``step``, else 1 % (an int
        parameter: at least one whole number). An NRPN's per Data Increment /
        Decrement: ``step``, else one step of its data (1/127, 1/16383 with
        cc14; an int parameter: at least one whole number)."""
        if self.spec.step is not None:
            return self.spec.step
        least = 1.0 / self.spec.steps if self.spec.type == "nrpn" else RELATIVE_STEP
        c, p = self.curve, self.param
        if p is not None and p.kind == "int" and c is not None and c.kind == "linear" and c.hi != c.lo:
            return max(least, 1.0 / abs(c.hi - c.lo))
        return least

    def relative_target(self, current: Any, ticks: int) -> tuple[Any, float | None]:
        """Where ``ticks`` encoder ticks take the parameter from ``current``:
        ``(new value, new position)`` (position None for bool and choice).
        Moves along the curve's travel and stops at its ends."""
        p = self.param
        if p.kind == "bool":
            return ticks > 0, None
        if p.kind == "choice":
            i = p.choices.index(current) if current in p.choices else 0
            return p.choices[min(len(p.choices) - 1, max(0, i + ticks))], None
        rel = self.rel
        if rel is not None and rel[1] == current:  # still where this encoder left it: its finer position
            pos = rel[0]
        else:
            pos = self.curve.position(float(current))
        pos = min(1.0, max(0.0, pos + ticks * self.rel_step))
        return self.value_at(pos), pos

    def raw_for(self, value: Any) -> int:
        p, steps = self.param, self.spec.steps
        if p.kind == "bool":
            return 127 if value else 0
        if p.kind == "choice":
            n = len(p.choices)
            i = p.choices.index(value) if value in p.choices else 0
            return int(round((i + 0.5) / n * steps))
        return int(round(self.curve.position(float(value)) * steps))


class _NrpnSelect:
    """One MIDI channel's (N)RPN selection, as CCs 99/98 (NRPN) and 101/100
    (RPN) leave it. Tracked on every channel; used where the channel has
    NRPN bindings, and by learn."""

    __slots__ = ("nrpn_msb", "nrpn_lsb", "rpn_msb", "rpn_lsb", "active")

    def __init__(self):
        self.nrpn_msb: int | None = None
        self.nrpn_lsb: int | None = None
        self.rpn_msb: int | None = None
        self.rpn_lsb: int | None = None
        self.active: str | None = None  # "nrpn", "rpn" or None (nothing, or the null RPN 127/127)

    def update(self, cc: int, val: int) -> None:
        if cc == 99:
            self.nrpn_msb, self.active = val, "nrpn"
        elif cc == 98:
            self.nrpn_lsb, self.active = val, "nrpn"
        elif cc in (101, 100):
            if cc == 101:
                self.rpn_msb = val
            else:
                self.rpn_lsb = val
            # selecting an RPN deselects the NRPN; the null RPN (127/127) deselects both
            self.active = None if (self.rpn_msb, self.rpn_lsb) == (127, 127) else "rpn"

    def state(self) -> tuple:
        return self.nrpn_msb, self.nrpn_lsb, self.rpn_msb, self.rpn_lsb, self.active

    def restore(self, state: tuple) -> None:
        self.nrpn_msb, self.nrpn_lsb, self.rpn_msb, self.rpn_lsb, self.active = state

    @property
    def number(self) -> int | None:
        """The selected NRPN's number, or None (none, or an RPN, selected)."""
        if self.active != "nrpn" or self.nrpn_msb is None or self.nrpn_lsb is None:
            return None
        return (self.nrpn_msb << 7) | self.nrpn_lsb


# --------------------------------------------------------------------------
# learn


class Learn:
    """One armed MIDI learn. ``state``: armed, learned, timeout, cancelled;
    ``binding`` once learned; :meth:`wait` blocks until it ends."""

    _ids = itertools.count(1)


    def __init__(self, address: str, timeout_s: float, on_learned: Callable[[dict], None] | None,
                 on_cancelled: Callable[["Learn"], None] | None = None):
        self.address = address
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.on_learned = on_learned
        self._on_cancelled = on_cancelled  # announces a cancel (``event.learn`` with ``cancelled``)
        self.id = next(Learn._ids)  # in the command's reply and in its event.learn
        self.state = "armed"
        self.binding: Binding | None = None
        self.note = ""  # why an event was passed over, for learn_status
        self._done = threading.Event()

    def finish(self, state: str, binding: Binding | None = None, why: str = "") -> None:
        if self.state != "armed":  # (ended already)
            return
        self.state, self.binding = state, binding
        if why and not self.note:
            self.note = why
        self._done.set()
        if state == "cancelled" and self._on_cancelled is not None:
            self._on_cancelled(self)

    def wait(self, timeout: float | None = None) -> Binding | None:
        self._done.wait(timeout)
        return self.binding

    def status(self) -> dict:
        d: dict[str, Any] = {"address": self.address, "state": self.state, "learn_id": self.id}
        if self.state == "armed":
            d["seconds_left"] = round(max(0.0, self.deadline - time.monotonic()), 1)
        if self.binding is not None:
            d["binding"] = self.binding.to_dict()
        if self.note:
            d["note"] = self.note
        return d


# --------------------------------------------------------------------------
# ports


def _rtmidi():
    import rtmidi

    return rtmidi


#: The JACK MIDI bridge: a small program run in its own process (one per
#: MidiControl) that holds the two python-rtmidi JACK clients. stdin: one
#: message to send per line, hex ("b0 07 40"); EOF = close and exit.
#: stdout: "ready IN_PORT OUT_PORT" once the ports exist, "m b0 07 40" per
#: message received, "error TEXT" before giving up. It waits for the server
#: when it is not there yet, and exits when the server goes away.
_BRIDGE = r'''
import os, queue, signal, sys, threading, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
lock = threading.Lock()
def say(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
name = sys.argv[1]
# python-rtmidi's wheel carries a libjack of its own, which speaks only to a JACK2 server: PipeWire's
# JACK layer (pw-jack) never answers it ("JACK server not running?"). Where the system's libjack (the
# one JACK-Client loads) is PipeWire's, it is made global first, and rtmidi's calls reach it. (Under
# JACK2 rtmidi keeps its own: with the system's, MIDI input was lost now and then after a bridge restart)
try:
    import ctypes, ctypes.util
    _lj = ctypes.util.find_library("jack") or "libjack.so.0"
    _v = ctypes.CDLL(_lj).jack_get_version_string
    _v.restype = ctypes.c_char_p
    if b"PipeWire" in (_v() or b""):
        ctypes.CDLL(_lj, mode=ctypes.RTLD_GLOBAL)
except (OSError, AttributeError):
    pass
try:
    import jack, rtmidi
except ImportError as e:
    say("error cannot import %s" % e)
    sys.exit(2)
sendq = queue.SimpleQueue()
def read_stdin():
    for line in sys.stdin.buffer:
        sendq.put(line)
    sendq.put(None)
threading.Thread(target=read_stdin, daemon=True).start()
watch = None
while watch is None:  # wait for the server ($JACK_DEFAULT_SERVER)
    try:
        watch = jack.Client(name + "-watch", no_start_server=True)
    except jack.JackError:
        try:
            if sendq.get(timeout=0.5) is None:
                sys.exit(0)
        except queue.Empty:
            pass
watch.set_shutdown_callback(lambda status, reason: os._exit(3))
def midi_ports():
    return {p.name for p in watch.get_ports(is_midi=True)}
try:
    before = midi_ports()
    mi = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=name + "-in", queue_size_limit=16384)
    mi.ignore_types(sysex=True, timing=True, active_sense=True)
    mi.open_virtual_port("in")
    mo = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name + "-out")
    mo.open_virtual_port("out")
    new = midi_ports() - before
except Exception as e:
    say("error %s: %s" % (type(e).__name__, e))
    os._exit(2)
def pick(suffix, default):
    hits = sorted(p for p in new if p.endswith(suffix))
    return hits[0] if hits else default
stopping = threading.Event()
def write_out():
    # rtmidi's own input queue, polled: with a callback, python-rtmidi 1.5's
    # JACK input repeats or garbles messages in a burst (seen with 1000 CCs)
    idle = 0
    while not stopping.is_set():
        m = mi.get_message()
        if m is None:  # 1 ms while a control moves, up to 8 ms when all is still
            idle += 1
            time.sleep(0.001 if idle < 50 else 0.002 if idle < 300 else 0.008)
            continue
        idle = 0
        say("m " + bytes(m[0]).hex(" "))
poller = threading.Thread(target=write_out, daemon=True)
poller.start()
ours = {"in": pick(":in", name + "-in:in"), "out": pick(":out", name + "-out:out")}
say("ready %s %s" % (ours["in"], ours["out"]))
# connections made to our ports (by hand, or by an earlier bridge: argv[2]) are remembered and made
# again when the other port comes back (a controller unplugged and plugged in again, a2jmidid or
# PipeWire re-creating its port); one taken down while both ports exist is forgotten. Polled from a
# thread: a Python JACK callback here would wait for the GIL that rtmidi holds inside libjack
import json
remember = {(k, p) for k, p in json.loads(sys.argv[2])} if len(sys.argv) > 2 else set()
def identity(port):
    try:
        return watch.get_uuid_for_client_name(port.split(":", 1)[0])
    except jack.JackError:
        return None
def keep_connections():
    known, suspect, ids = set(), set(), {}
    while not stopping.is_set():
        try:
            # a port that went and came back between two polls (a controller replugged within 0.25 s) is
            # told from one whose connection was taken down by its identity: JACK2 gives a re-created
            # client a new uuid (a port's own uuid it may reuse), PipeWire a re-created port a new uuid
            last, ids = ids, {p.name: (identity(p.name), p.uuid) for p in watch.get_ports(is_midi=True)}
            names = set(ids)
            reborn = {n for n in names if n in last and last[n] != ids[n]}
            cur = {(k, p.name) for k, mine in ours.items() for p in watch.get_all_connections(mine)}
            for c in sorted(cur - remember):
                remember.add(c)
                say("conn %s %s" % c)
            gone = known - cur
            for c in sorted(suspect):
                if c in cur or c[1] not in names or c[1] in reborn:  # connected again, or its port went: kept
                    suspect.discard(c)
                elif c not in gone:  # still there a poll later, and still not connected: taken down by hand
                    suspect.discard(c)
                    remember.discard(c)
                    say("disc %s %s" % c)
            # a connection gone while its port is still listed: by hand, or a port caught between its
            # disconnection and its removal (a client closing): the next poll tells
            suspect |= {c for c in gone if c[1] in names and c[1] not in reborn}
            for k, peer in sorted(remember - cur - suspect):
                if peer in names:
                    try:
                        if k == "in":
                            watch.connect(peer, ours["in"])
                        else:
                            watch.connect(ours["out"], peer)
                        cur.add((k, peer))
                    except jack.JackError:
                        pass
            for c in sorted(cur - known):
                if c[0] == "out":  # a controller linked to our output (again): the daemon sends it every value
                    say("up %s %s" % c)
            known = cur
        except Exception:
            pass
        stopping.wait(0.25)
keeper = threading.Thread(target=keep_connections, daemon=True)
keeper.start()
while True:
    line = sendq.get()
    if line is None:
        break
    try:
        mo.send_message(list(bytes.fromhex(line.decode("ascii"))))
    except Exception:
        pass
stopping.set()
poller.join()  # (deleting mi while it is polled would crash)
keeper.join()
for o in (mi, mo):
    try:
        o.close_port()
        o.delete()
    except Exception:
        pass
watch.close()
sys.stdout.flush()
os._exit(0)
'''


class _JackBridge:
    """The daemon's side of the JACK MIDI bridge (see :data:`_BRIDGE`).

    Why a process of its own: python-rtmidi calls libjack holding the GIL.
    In the daemon's process, whose audio client has Python callbacks
    (process, latency, port registration), the server then waits for a
    callback that waits for the GIL: every rtmidi JACK open or close costs
    a server timeout (an xrun, ~1.5 s) or hangs for good. A JACK-Client
    MIDI client in the daemon would avoid that but put a second Python
    process callback, taking the GIL every period, next to the audio one.
    In the bridge process rtmidi's own C++ callback does the per-period
    work and the daemon's audio thread shares its GIL with nobody new.

    A reader thread turns the bridge's lines into queue items for the
    dispatcher (``(label, bytes)``; ``("jack_ready", proc)``; ``("jack_down", proc)``)
    and does nothing else. :meth:`send` never blocks: the pipe is
    non-blocking and a message that does not fit is dropped and counted.
    """

    def __init__(self, name: str, server: str, q: queue.SimpleQueue, label: str = "jack"):
        self.name, self.server, self.q, self.label = name, server, q, label
        self.proc: Any = None
        self.in_port: str | None = None
        self.out_port: str | None = None
        self.ready = threading.Event()
        self.problem = ""
        self.dropped = 0
        self.starts = 0
        self.started_at = 0.0
        self._reader: threading.Thread | None = None
        #: ("in" | "out", the other JACK port) made to our ports, kept across the other port's coming
        #: and going and across bridge restarts (the bridge makes them again)
        self.connections: set[tuple[str, str]] = set()
        #: called (from the reader thread) when :attr:`connections` changed
        self.on_change: Callable[[], None] | None = None

    def open(self) -> None:
        """Start the bridge process (returns at once; ``ready`` is set when
        the ports exist). Raises OSError when it cannot be started."""
        import subprocess

        self.close()
        self.ready.clear()
        self.in_port = self.out_port = None
        self.problem = ""
        env = dict(os.environ, JACK_NO_START_SERVER="1")
        if self.server:
            env["JACK_DEFAULT_SERVER"] = self.server
        import json

        proc = subprocess.Popen([sys.executable, "-c", _BRIDGE, self.name, json.dumps(sorted(self.connections))],
                                stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True, close_fds=True)
        os.set_blocking(proc.stdin.fileno(), False)  # written with os.write: whole lines or nothing
        self.proc, self.started_at = proc, time.monotonic()
        self.starts += 1
        self._reader = threading.Thread(target=self._read, args=(proc,), name="quietcast-midi-bridge", daemon=True)
        self._reader.start()

    def _read(self, proc) -> None:
        q, label = self.q, self.label
        for raw in proc.stdout:
            if raw.startswith(b"m "):
                try:
                    q.put((label, bytes.fromhex(raw[2:].decode("ascii"))))
                except ValueError:
                    pass
            elif raw.startswith(b"ready "):
                parts = raw.decode("utf-8", "replace").split()
                if len(parts) == 3:
                    self.in_port, self.out_port = parts[1], parts[2]
                self.ready.set()
                q.put(("jack_ready", proc))
            elif raw.startswith(b"up out "):
                q.put(("jack_linked", proc))
            elif raw.startswith((b"conn ", b"disc ")):
                parts = raw.decode("utf-8", "replace").rstrip("\n").split(" ", 2)
                if len(parts) == 3 and parts[1] in ("in", "out"):
                    pair = (parts[1], parts[2])
                    if (pair in self.connections) != (parts[0] == "conn"):
                        self.connections = ((self.connections | {pair}) if parts[0] == "conn"
                                            else (self.connections - {pair}))  # (replaced: read elsewhere)
                        if self.on_change is not None:
                            try:
                                self.on_change()
                            except Exception:  # pragma: no cover - a listener never stops the reader
                                pass
            elif raw.startswith(b"error "):
                self.problem = raw[6:].decode("utf-8", "replace").strip()
        try:
            proc.wait(5)
        except Exception:
            pass
        if proc is self.proc:
            self.ready.clear()
        q.put(("jack_down", proc))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, msg: list[int]) -> bool:
        """Queue one message for the bridge; never blocks."""
        if not (self.ready.is_set() and self.alive):
            return False
        try:
            os.write(self.proc.stdin.fileno(), bytes(msg).hex(" ").encode("ascii") + b"\n")
            return True
        except (BlockingIOError, BrokenPipeError, OSError):
            self.dropped += 1
            return False

    #: seconds the bridge gets to close its ports and exit (~0.1 s when jackd runs)
    CLOSE_TIMEOUT_S = 1.5

    def close(self, timeout: float | None = None) -> None:
        """EOF to the bridge, which closes its JACK clients and exits; one
        that has not exited after ``timeout`` s (:attr:`CLOSE_TIMEOUT_S`) is
        killed: closing a JACK client waits for a frozen jackd without end
        (SIGSTOP, a hung driver), and the daemon's stop must not wait."""
        proc, self.proc = self.proc, None
        self.ready.clear()
        if proc is None:
            return
        limit = self.CLOSE_TIMEOUT_S if timeout is None else timeout
        try:
            proc.stdin.close()  # EOF: the bridge closes its ports and exits
        except OSError:
            pass
        try:
            proc.wait(limit)
        except Exception:
            log.warning("the JACK MIDI bridge did not close within %g s (is jackd frozen, e.g. stopped with "
                        "SIGSTOP?); killed", limit)
            proc.kill()
            proc.wait(5)
        timeout = 5.0 if timeout is None else timeout
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None
        try:
            proc.stdout.close()
        except OSError:
            pass


def _match_port(want: str, names: list[str]) -> tuple[int | None, str]:
    """Index of the port named ``want`` (exact, else case-insensitive part
    of a name) and a note (ambiguity, close names)."""
    for i, n in enumerate(names):
        if n == want:
            return i, ""
    low = want.lower()
    hits = [i for i, n in enumerate(names) if low in n.lower()]
    if hits:
        note = ""
        if len(hits) > 1:
            note = f"{len(hits)} ports match: {', '.join(repr(names[i]) for i in hits)}; using the first"
        return hits[0], note
    avail = ", ".join(repr(n) for n in names) or "none"
    return None, f"no port matches{did_you_mean(want, names)}; ports: {avail}"


class _Hardware:
    """One configured hardware port (ALSA), by name."""

    def __init__(self, direction: str, want: str):
        self.direction, self.want = direction, want
        self.obj = None
        self.name: str | None = None
        self.problem = ""
        self.alsa_missing = False
        self.alsa_error = ""
        self.warned = False

    @property
    def kind(self) -> str:
        return "input" if self.direction == "in" else "output"

    def try_open(self, client: str, callback=None) -> bool:
        rtmidi = _rtmidi()
        kind = self.kind
        try:
            obj = (rtmidi.MidiIn if self.direction == "in" else rtmidi.MidiOut)(rtmidi.API_LINUX_ALSA, name=client)
        except rtmidi.RtMidiError as e:
            self.no_alsa(str(e))
            return False
        try:
            names = obj.get_ports()
            i, note = _match_port(self.want, names)
            if i is None:
                self.problem = f"MIDI {kind} {self.want!r} not found: {note}; looking again every {HARDWARE_RETRY_S:g} s"
                obj.delete()
                return False
            if self.direction == "in":
                obj.ignore_types(sysex=True, timing=True, active_sense=True)
                obj.set_callback(callback, f"alsa:{names[i]}")
            obj.open_port(i, name=f"{kind} {self.want}")
        except rtmidi.RtMidiError as e:
            self.problem = f"MIDI {kind} {self.want!r} could not be opened: {e}"
            try:
                obj.delete()
            except Exception:
                pass
            return False
        self.obj, self.name, self.problem = obj, names[i], note
        if note:
            log.warning("MIDI %s %r: %s", kind, self.want, note)
        log.info("MIDI %s %r opened (ALSA port %r)", kind, self.want, self.name)
        return True

    def gone(self) -> bool:
        """Whether the opened port has left ALSA (the controller was
        unplugged: it comes back, if at all, as another client number)."""
        try:
            return self.name not in self.obj.get_ports()
        except Exception:
            return True

    def no_alsa(self, why: str) -> None:
        kind = self.kind
        self.alsa_missing, self.alsa_error = True, why
        self.problem = (f"MIDI {kind} {self.want!r} not opened: the ALSA sequencer is not available "
                        f"(/dev/snd/seq: {why}); MIDI works on the JACK ports only")

    def close(self) -> None:
        if self.obj is not None:
            try:
                if self.direction == "in":
                    self.obj.cancel_callback()
                self.obj.close_port()
                self.obj.delete()
            except Exception:  # pragma: no cover
                pass
            self.obj = None

    def status(self) -> dict:
        if self.obj is not None:
            return {"open": True, "port": self.name, **({"note": self.problem} if self.problem else {})}
        return {"open": False, "problem": self.problem}


# --------------------------------------------------------------------------
# the controller


_STOP = object()


class MidiControl:
    """MIDI in/out for a running daemon.

    Args:
        registry: the daemon's :class:`~quietcast.daemon.registry.Registry`
            (the engine must exist: chain addresses resolve through it).
        midi_config: :class:`~quietcast.daemon.config.MidiConfig`.
        jack_server: the JACK server name ("" = $JACK_DEFAULT_SERVER or default).
        client_name: the daemon's JACK client name; the JACK MIDI ports
            are ``CLIENT-midi-in:in`` and ``CLIENT-midi-out:out``.
        state_dir: where ``midi.toml`` lives when ``midi_config.mapping``
            is "" (default: $STATE_DIRECTORY, else $XDG_STATE_HOME/quietcast,
            else ~/.local/state/quietcast).

    Thread safety: :meth:`learn`, :meth:`cancel_learn`, :meth:`unbind`,
    :meth:`bindings`, :meth:`status` and :meth:`learn_status` may be called
    from any thread; the ports and the bindings are only touched by the
    dispatcher thread. ``on_learned`` callbacks (``fn(binding dict)``) run
    on the dispatcher thread and must not block.
    """

    def __init__(self, registry, midi_config, jack_server: str = "", client_name: str = "quietcast",
                 state_dir: str | None = None):
        self.registry = registry
        self.config = midi_config
        self.server = jack_server or ""
        self.client_name = client_name
        if midi_config.mapping:
            self.mapping_path = midi_config.mapping
        else:
            self.mapping_path = os.path.join(state_dir or default_state_dir(), "midi.toml")
        #: ``fn(doc)`` or a list of them, called on the dispatcher thread when a
        #: learn ends: the binding's ``[[map]]`` dict, ``{"address": ...,
        #: "timed_out": True, "timeout_s": ...}``, or ``{"address": ...,
        #: "cancelled": True, "note": why}`` (cancelled, replaced by another
        #: learn, MIDI stopped)
        self.on_learned: Callable[[dict], None] | list | None = None
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._tls = threading.local()
        self._lock = threading.Lock()  # guards _learn
        self._learn: Learn | None = None
        self._last_learn: Learn | None = None
        self._pending_cc14: tuple | None = None  # learn: (Learn, channel, number, deadline, first seen)
        #: learn after an NRPN select or data entry: [Learn, channel, deadline, the NRPN number once its
        #: data entry MSB came (waiting for an LSB), else None]
        self._pending_nrpn: list | None = None
        self._nrpn_sel: dict[int, _NrpnSelect] = {}  # channel 0..15 -> its (N)RPN selection
        #: NRPN feedback sequences sent lately, per channel: [(cc, value) ...], monotonic time
        self._nrpn_sent: dict[int, list[tuple[list[tuple[int, int]], float]]] = {}
        #: channel -> (the sequence coming back, how far, the selection before it): an echoed select
        #: is ours, and the selection the controller made is put back once its data has come
        self._nrpn_echo: dict[int, tuple[list[tuple[int, int]], int, tuple]] = {}
        self._nrpn_channels: frozenset = frozenset()  # channels 0..15 with NRPN bindings
        self._bound: list[_Bound] = []
        self._by_control: dict[tuple, list[_Bound]] = {}
        self._by_address: dict[str, list[_Bound]] = {}
        self._jack = _JackBridge(f"{client_name}-midi", self.server, self._q)
        self._jack_problem = ""
        self._jack_backoff = JACK_RETRY_S
        self._next_jack_retry = 0.0
        self._hw_in: list[_Hardware] = []
        self._hw_out: list[_Hardware] = []
        self._next_retry = 0.0
        self.counters = {"received": 0, "applied": 0, "ignored_pickup": 0, "unmapped": 0,
                         "feedback_sent": 0, "echo_ignored": 0, "errors": 0}
        self.last_error = ""
        self._failing: set[str] = set()
        self.started = False

    @property
    def jack_connections(self) -> list[list[str]]:
        """The connections remembered for the JACK MIDI ports, as ``[in|out,
        other port]`` (made again by the bridge when the other port comes
        back; a daemon carries them across a ``[midi]`` reload and, in its
        state file, a restart)."""
        return [list(c) for c in sorted(self._jack.connections)]

    def remember_connections(self, pairs) -> None:
        """Before :meth:`start`: connections (``[in|out, port]``) to make
        when the ports and the other ends exist (an earlier MidiControl's,
        or the state file's). Malformed entries are passed over."""
        good = {(k, p) for k, p in (tuple(x) for x in pairs if isinstance(x, (list, tuple)) and len(x) == 2)
                if k in ("in", "out") and isinstance(p, str) and ":" in p}
        self._jack.connections = self._jack.connections | good

    @property
    def on_connections_changed(self) -> Callable[[], None] | None:
        return self._jack.on_change

    @on_connections_changed.setter
    def on_connections_changed(self, fn: Callable[[], None] | None) -> None:
        self._jack.on_change = fn

    # ------------------------------------------------------------------
    # names

    @property
    def jack_in_name(self) -> str:
        """The JACK MIDI input port, ``CLIENT-midi-in:in`` (as JACK named
        it: a taken client name gets a suffix)."""
        return self._jack.in_port or f"{self.client_name}-midi-in:in"

    @property
    def jack_out_name(self) -> str:
        """The JACK MIDI output port, ``CLIENT-midi-out:out``."""
        return self._jack.out_port or f"{self.client_name}-midi-out:out"

    # ------------------------------------------------------------------
    # lifecycle

    def _server_words(self) -> str:
        """Which JACK server the ports wait for, in words for the log:
        PipeWire's JACK layer has no server names."""
        if self.server:
            return f"server {self.server!r}"
        from .jackio import libjack_version

        return "PipeWire's JACK layer" if "PipeWire" in libjack_version() else "the default JACK server"

    def start(self, wait_ready_s: float = JACK_READY_S) -> None:
        """Load the mapping (raises :class:`MidiMapError` with every
        problem), open the ports, start the dispatcher, send every mapped
        value once. Waits up to ``wait_ready_s`` for the JACK MIDI ports
        (0: return at once; they appear when the bridge is up, ~0.3 s).
        Does nothing when ``enabled = false``."""
        if not self.config.enabled or self.started:
            return
        self._install(load_mapping(self.mapping_path, self.registry))
        if self._open_jack() and wait_ready_s > 0 and not self._jack.ready.wait(wait_ready_s):
            self._jack_problem = (f"the JACK MIDI ports are not there after {wait_ready_s:g} s "
                                  f"({self._server_words()}); they will appear when it answers")
            log.warning("%s", self._jack_problem)
        self._hw_in = [_Hardware("in", n) for n in self.config.inputs]
        self._hw_out = [_Hardware("out", n) for n in self.config.outputs]
        self._open_hardware(first=True)
        self.registry.add_listener(self._on_change)
        self._thread = threading.Thread(target=self._run, name="quietcast-midi", daemon=True)
        self.started = True
        self._thread.start()
        self.sync_feedback()
        log.info("MIDI: %d binding(s) from %s; JACK ports %s, %s", len(self._bound), self.mapping_path,
                 self.jack_in_name, self.jack_out_name)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the dispatcher (sentinel + join), then close every port."""
        if not self.started:
            return
        self.registry.remove_listener(self._on_change)
        self._q.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._close_jack()
        for h in self._hw_in + self._hw_out:
            h.close()
        with self._lock:
            if self._learn is not None:
                self._learn.finish("cancelled", why="MIDI control stopped")
                self._learn = None
        self.started = False

    def reopen_jack(self) -> None:
        """Start the JACK MIDI bridge again now. Optional after the daemon
        reconnected to a restarted jackd: the bridge exits with the old
        server and is started again within about a second by itself."""
        if self.started:
            self._call(self._reopen_jack_now)

    def reload(self) -> int:
        """Read the mapping file again; returns the number of bindings.
        Raises :class:`MidiMapError` (the old bindings stay)."""
        specs = load_mapping(self.mapping_path, self.registry)
        self._call(lambda: self._install(specs))
        self.sync_feedback()
        return len(specs)

    def sync_feedback(self) -> None:
        """Send every mapped value to the outputs (LEDs, motor faders)."""
        for addr in list(self._by_address):
            self._q.put(("sync", addr))

    def values_changed(self, prefix: str = "") -> None:
        """Mapped values under ``prefix`` changed without a set (a chain
        loaded, an engine rebuilt): send them out, and make each fader with
        soft takeover pick the new value up before it moves it."""
        for addr in list(self._by_address):
            if addr.startswith(prefix):
                self._q.put(("changed", addr, None, None))

    # ------------------------------------------------------------------
    # public, any thread

    def learn(self, address: str, timeout_s: float = 30.0, on_learned: Callable[[dict], None] | None = None) -> Learn:
        """Arm MIDI learn for ``address`` (checked now: ParameterError with
        the close matches). The next CC / note-on / pitch bend / NRPN on any
        input is bound to it and saved. Replaces an armed learn. Returns the
        :class:`Learn` (``.wait()``, ``.status()``)."""
        p = self.registry.resolve(address)[2]
        if p.kind in ("str", "dict"):
            raise ParameterError(address, f"a {p.kind} parameter cannot be driven by MIDI")
        if not (isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool) and 0 < timeout_s <= 3600):
            raise ParameterError("timeout_s", f"value {timeout_s!r} is out of range (0, 3600] s")
        if not self.started:
            raise RuntimeError("MIDI is not running (disabled in [midi], or not started)")
        lr = Learn(address, float(timeout_s), on_learned, on_cancelled=self._announce_cancel)
        with self._lock:
            if self._learn is not None:
                self._learn.finish("cancelled", why=f"replaced: learn armed for {address}")
            self._learn = self._last_learn = lr
        self._q.put(("wake",))
        log.info("MIDI learn armed for %s (%g s): move a control", address, timeout_s)
        return lr

    def cancel_learn(self) -> bool:
        with self._lock:
            lr, self._learn = self._learn, None
        if lr is not None:
            lr.finish("cancelled", why="cancelled by a client")
            return True
        return False

    def _announce_cancel(self, lr: "Learn") -> None:
        """A learn ended without a binding or a timeout: say so on the event
        stream (``quietcast ctl learn`` stops waiting at once)."""
        self._announce(lr, {"address": lr.address, "cancelled": True, **({"note": lr.note} if lr.note else {})})

    def learn_status(self) -> dict:
        with self._lock:
            lr = self._learn or self._last_learn
        return lr.status() if lr is not None else {"state": "idle"}

    def bindings(self) -> list[dict]:
        """Every binding as its ``[[map]]`` dict, plus ``attached`` (pickup
        state) and ``control`` (in words)."""
        out = []
        for b in list(self._bound):
            d = b.spec.to_dict()
            if b.spec.curve is None:
                try:
                    p = self.registry.resolve(b.spec.address)[2]
                    if p.kind in ("float", "int"):
                        d["curve"] = default_curve(p)
                except (ParameterError, ValueError):
                    pass
            d["attached"] = b.attached
            d["control"] = b.spec.describe_control()
            out.append(d)
        return out

    def unbind(self, address: str) -> int:
        """Remove every binding of ``address``; saves the mapping file.
        Returns how many were removed."""
        def do():
            keep = [b.spec for b in self._bound if b.spec.address != address]
            n = len(self._bound) - len(keep)
            if n:
                self._install(keep)
                self._save()
            return n
        return self._call(do)

    def status(self) -> dict:
        st: dict[str, Any] = {
            "enabled": bool(self.config.enabled), "running": self.started, "mapping": self.mapping_path,
            "bindings": len(self._bound),
            "jack": {"in": self.jack_in_name if self._jack.ready.is_set() else None,
                     "out": self.jack_out_name if self._jack.ready.is_set() else None,
                     **({"problem": self._jack_problem} if self._jack_problem else {}),
                     "bridge_starts": self._jack.starts,
                     "connections": {"in": sorted(p for k, p in self._jack.connections if k == "in"),
                                     "out": sorted(p for k, p in self._jack.connections if k == "out")},
                     **({"feedback_dropped": self._jack.dropped} if self._jack.dropped else {})},
            "hardware_inputs": {h.want: h.status() for h in self._hw_in},
            "hardware_outputs": {h.want: h.status() for h in self._hw_out},
            **self.counters,
            "learn": self.learn_status(),
        }
        if self.last_error:
            st["last_error"] = self.last_error
        return st

    # ------------------------------------------------------------------
    # ports (start/stop, then the dispatcher thread only)

    def _open_jack(self) -> bool:
        try:
            self._jack.open()
        except OSError as e:
            self._jack_problem = f"the JACK MIDI bridge could not be started: {e}"
            log.warning("%s", self._jack_problem)
            self._next_jack_retry = time.monotonic() + self._jack_backoff
            return False
        return True

    def _close_jack(self) -> None:
        self._jack.close()

    def _reopen_jack_now(self) -> None:
        self._jack_backoff = JACK_RETRY_S
        self._open_jack()

    def _jack_event(self, tag: str) -> None:
        """The bridge reported its ports ready, or it stopped."""
        if tag == "jack_ready":
            if self._jack_problem:
                log.info("JACK MIDI ports open: %s, %s", self.jack_in_name, self.jack_out_name)
            self._jack_problem = ""
            self._jack_backoff = JACK_RETRY_S
            for addr in list(self._by_address):  # LEDs and motor faders catch up
                self._feedback(addr, None, None, detach=False)
            return
        # jack_down: the bridge exited (the server went away, or it failed)
        ran = time.monotonic() - self._jack.started_at
        why = self._jack.problem or "the JACK server went away"
        if not self._jack_problem:
            log.warning("JACK MIDI ports gone: %s; reopening", why)
        self._jack_problem = f"JACK MIDI ports gone: {why}"
        self._jack.close()
        if ran < 5.0:  # it fails at once: back off
            self._jack_backoff = min(JACK_RETRY_MAX_S, self._jack_backoff * 2)
        else:
            self._jack_backoff = JACK_RETRY_S
        self._next_jack_retry = time.monotonic() + self._jack_backoff

    def _open_hardware(self, first: bool = False) -> None:
        no_alsa = ""
        resync = False
        for h in self._hw_in + self._hw_out:
            if h.obj is not None or (h.alsa_missing and not first):
                continue
            if no_alsa:  # one look at ALSA is enough: do not ask (and print ALSA's error) again
                h.no_alsa(no_alsa)
                ok = False
            else:
                ok = h.try_open(self.client_name, self._enqueue if h.direction == "in" else None)
                if h.alsa_missing:
                    no_alsa = h.alsa_error
            if not ok:
                if not h.warned:
                    log.warning("%s", h.problem)
                    h.warned = True
            elif h.direction == "out" and not first:
                resync = True
        if resync:  # an output plugged in (again) later: its motor faders and LEDs catch up (start() sends at first)
            self.sync_feedback()
        self._next_retry = time.monotonic() + HARDWARE_RETRY_S

    # ------------------------------------------------------------------
    # producers: enqueue only

    def _enqueue(self, event, label) -> None:
        """rtmidi input callback (rtmidi's thread): enqueue, nothing else."""
        self._q.put((label, event[0]))

    def _on_change(self, address: str, value: Any, source: str) -> None:
        """Registry listener (the caller's thread): enqueue, nothing else."""
        if address in self._by_address:
            self._q.put(("changed", address, value, getattr(self._tls, "applying", None)))

    def _call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the dispatcher thread and return its result (inline
        when the dispatcher is not running or this is it)."""
        t = self._thread
        if t is None or not t.is_alive() or threading.current_thread() is t:
            return fn()
        box: dict = {}
        done = threading.Event()
        self._q.put(("call", fn, box, done))
        if not done.wait(timeout):
            raise TimeoutError("the MIDI dispatcher did not answer")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    # ------------------------------------------------------------------
    # the dispatcher thread

    def _run(self) -> None:
        q = self._q
        while True:
            try:
                item = q.get(timeout=0.05 if (self._learn is not None or self._pending_cc14
                                              or self._pending_nrpn) else 0.5)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            try:
                self._housekeeping()
                if item is not None:
                    self._handle(item)
            except Exception as e:  # the dispatcher never dies
                self.counters["errors"] += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("MIDI dispatcher")

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._pending_cc14 is not None and now >= self._pending_cc14[3]:
            lr, ch, num, _, _ = self._pending_cc14
            self._pending_cc14 = None
            self._learned(lr, "cc", ch, num, cc14=False)
        if self._pending_nrpn is not None and now >= self._pending_nrpn[2]:
            self._nrpn_learn_end()
        with self._lock:
            lr = self._learn
            if lr is not None and now >= lr.deadline and self._pending_cc14 is None and self._pending_nrpn is None:
                self._learn = None
            else:
                lr = None
        if lr is not None:
            lr.finish("timeout")
            log.info("MIDI learn for %s timed out after %g s", lr.address, lr.timeout_s)
            self._announce(lr, {"address": lr.address, "timed_out": True, "timeout_s": lr.timeout_s})
        if self._jack.proc is None and now >= self._next_jack_retry:
            self._open_jack()
        if now >= self._next_retry and (self._hw_in or self._hw_out):
            for h in self._hw_in + self._hw_out:
                if h.obj is not None and h.gone():
                    log.warning("MIDI %s %r: ALSA port %r went away (unplugged?); looking for it again every %g s",
                                h.kind, h.want, h.name, HARDWARE_RETRY_S)
                    h.close()
                    h.problem = f"MIDI {h.kind} {h.want!r}: ALSA port {h.name!r} went away; looking for it again"
                    h.warned = True
            if any(h.obj is None and not h.alsa_missing for h in self._hw_in + self._hw_out):
                self._open_hardware()
            else:
                self._next_retry = now + HARDWARE_RETRY_S

    def _handle(self, item: tuple) -> None:
        tag = item[0]
        if tag == "changed":
            self._feedback(item[1], item[2], item[3])
        elif tag == "sync":
            self._feedback(item[1], None, None, detach=False)
        elif tag == "call":
            _, fn, box, done = item
            try:
                box["result"] = fn()
            except BaseException as e:
                box["error"] = e
            done.set()
        elif tag in ("jack_ready", "jack_down"):
            if item[1] is self._jack.proc:  # not an older bridge's news
                self._jack_event(tag)
        elif tag == "jack_linked":  # a controller connected (again) to the JACK MIDI output: it catches up
            if item[1] is self._jack.proc:
                for addr in list(self._by_address):
                    self._feedback(addr, None, None, detach=False)
        elif tag == "wake":
            pass
        else:
            try:
                self._midi(item[1])
            finally:  # counted once handled: a caller that saw the count sees the effect
                self.counters["received"] += 1

    # -- incoming

    def _midi(self, msg: list[int]) -> None:
        if not msg:
            return
        status = msg[0]
        kind, ch = status & 0xF0, status & 0x0F
        if kind == 0xB0 and len(msg) >= 3:
            ev = ("cc", ch, msg[1], msg[2])
        elif kind == 0x90 and len(msg) >= 3:
            ev = ("note", ch, msg[1], msg[2])  # velocity 0 = release
        elif kind == 0x80 and len(msg) >= 3:
            ev = ("note", ch, msg[1], 0)
        elif kind == 0xE0 and len(msg) >= 3:
            ev = ("pitch_bend", ch, 0, (msg[2] << 7) | msg[1])
        else:
            self.counters["unmapped"] += 1
            return
        sel = restore = None
        if ev[0] == "cc" and ev[2] in NRPN_CCS:
            sel = self._nrpn_sel.setdefault(ch, _NrpnSelect())
            restore = self._nrpn_echo_step(ch, ev[2], ev[3], sel)
            sel.update(ev[2], ev[3])
        try:
            self._dispatch(ev)
        finally:
            if restore is not None:  # the echo of our feedback is over: the controller's selection again
                sel.restore(restore)

    def _nrpn_echo_step(self, ch: int, cc: int, val: int, sel: "_NrpnSelect") -> tuple | None:
        """Follow the echo of an NRPN feedback sequence (99, 98, 6[, 38]) we
        sent, coming back from a surface or a soft thru that echoes: its
        select must not take over the selection of a controller that sends
        data without selecting again (a change from elsewhere to A, then the
        hand's data for B, moved A). Returns the selection to put back once
        this message (the sequence's last) is handled, else None."""
        st = self._nrpn_echo.get(ch)
        if st is not None:
            seq, i, saved = st
            if seq[i] == (cc, val):
                if i + 1 == len(seq):
                    del self._nrpn_echo[ch]
                    return saved
                self._nrpn_echo[ch] = (seq, i + 1, saved)
                return None
            del self._nrpn_echo[ch]  # not our sequence after all: the controller's own
        if cc == 99:
            now = time.monotonic()
            sent = [e for e in self._nrpn_sent.get(ch, ()) if now - e[1] < ECHO_S]
            k = next((k for k, (seq, _) in enumerate(sent) if seq[0] == (99, val)), None)
            if k is not None:
                seq = sent.pop(k)[0]
                self._nrpn_echo[ch] = (seq, 1, sel.state())
            self._nrpn_sent[ch] = sent
        return None

    def _dispatch(self, ev: tuple) -> None:
        if self._learn_event(ev):
            return
        typ, ch, num, val = ev
        if typ == "cc" and num in NRPN_CCS and ch in self._nrpn_channels:
            self._nrpn_event(ch, num, val)
            return
        hit = False
        bs = self._by_control.get((typ, ch, num), ())
        if bs and bs[0].spec.relative and self._relative_echo(bs, val):
            return
        for b in bs:
            hit = True
            self._apply(b, val)
        if typ == "cc" and 32 <= num < 64:
            for b in self._by_control.get(("cc", ch, num - 32), ()):
                if b.spec.cc14:
                    hit = True
                    self._apply(b, val, lsb=True)
        if not hit:
            self.counters["unmapped"] += 1

    def _nrpn_event(self, ch: int, num: int, val: int) -> None:
        """CC 6, 38, 96..101 on a channel with NRPN bindings: NRPN's (the
        selection itself is kept by :meth:`_midi`)."""
        if num in (98, 99, 100, 101):
            return  # a select: nothing moves until its data comes
        sel = self._nrpn_sel.get(ch)
        number = sel.number if sel is not None else None
        bs = self._by_control.get(("nrpn", ch, number), ()) if number is not None else ()
        if not bs:
            self.counters["unmapped"] += 1  # data for an RPN, for no selection, or for an NRPN not mapped
            return
        for b in bs:
            if num == 6:
                self._apply(b, val)
            elif num == 38:
                if b.spec.cc14:  # (a 7-bit binding's value is the MSB alone)
                    self._apply(b, val, lsb=True)
            else:
                self._apply_step(b, 1 if num == 96 else -1)

    def _apply_step(self, b: _Bound, ticks: int) -> None:
        """NRPN Data Increment (+1) / Decrement (-1): move the value ``step``
        of the travel from wherever it is (the data byte is not an amount),
        clamped at the ends; the controller gets the new value."""
        spec = b.spec
        p = self._param_of(b)
        if p is None:
            return
        cur = self.registry.get(spec.address)
        new, pos = b.relative_target(cur, ticks)
        if new == cur:
            b.rel = (pos, cur) if pos is not None else None
            self._resend(b, cur)  # at an end: the display (a motor fader) shows where it is
            return
        stored = self._set(b, new)
        b.rel = (pos, stored) if (pos is not None and stored is not None) else None
        if stored is None:
            return
        if p.kind != "bool":  # (an LED always gets its state: see _feedback)
            self._resend(b, stored)  # the console's display or motor fader follows the steps
            if spec.takeover == "pickup" and p.kind in ("float", "int"):
                b.attached = False  # a fader on the data entry that did not follow picks the value up first

    def _param_of(self, b: _Bound) -> Param | None:
        """The binding's parameter as it is now, or None (its address no
        longer resolves: counted and logged as an error)."""
        try:
            return b.refresh()
        except (ParameterError, ValueError) as e:
            self._error(b.spec.address, str(e))
            return None

    def _apply(self, b: _Bound, val: int, lsb: bool = False) -> None:
        spec = b.spec
        p = self._param_of(b)
        if p is None:
            return
        if spec.relative:
            self._apply_relative(b, p, val)
            return
        if p.kind == "bool":
            if lsb:
                return  # a 14-bit button (CC or NRPN): its MSB said it (>= 64 is on); an LSB of 0 is no release
            press = val >= 64 if spec.type in ("cc", "nrpn") else val > 0
            live = b.live_feedback(ECHO_S)
            hit = next((i for i, (raw, _) in enumerate(live) if (raw >= 64) == press), None)
            if hit is not None:
                # an LED state sent lately, coming back (a soft thru, a surface that echoes): not a press.
                # Taken as one, a toggle set on from elsewhere flipped straight back off, and a
                # momentary button fed itself for ever (a set, its feedback, its echo, a set ...).
                # Each LED message comes back once at most: a match is used up (on then off from a
                # script within the round trip: the off's echo must not make the on's a press). A
                # hand's second press comes after its release, which is not an LED state in flight
                # (and ends the echo window)
                del live[hit]
                b.inflight = live
                self.counters["echo_ignored"] += 1
                return
            b.inflight = []
            if spec.button == "momentary":
                new = press
            elif press:
                new = not bool(self.registry.get(spec.address))
            else:
                return
            self._set(b, new)
            return
        if spec.cc14 and spec.type in ("cc", "nrpn"):
            if lsb:
                raw = (b.msb << 7) | val
            else:
                b.msb = val
                raw = val << 7
        else:
            raw = val
        if any(raw == e or (spec.cc14 and not lsb and val == e >> 7) for e, _ in b.live_feedback(ECHO_S)):
            # the feedback just sent, coming back (a motor fader or a soft thru that echoes): not a move.
            # Taken as one, two echoing controllers on one address never settle, and one nudges a value
            # set exactly (by a script) to the nearest fader step
            self.counters["echo_ignored"] += 1
            b.last_raw = raw
            b.attached = True  # the control sits at the value now (a motor put it there)
            return
        b.inflight = []  # a real move: whatever comes next is the hand's, not an echo
        if b.numeric and not b.attached:
            cur = b.raw_for(self.registry.get(spec.address))
            tol = spec.steps / 127.0
            prev = b.last_raw
            b.last_raw = raw
            crossed = prev is not None and (prev - cur) * (raw - cur) <= 0
            if not (crossed or abs(raw - cur) <= tol):
                self.counters["ignored_pickup"] += 1
                return
            b.attached = True
        b.last_raw = raw
        self._set(b, b.value_for(raw))

    def _apply_relative(self, b: _Bound, p: Param, val: int) -> None:
        """One message of a relative (endless) encoder: move the value by
        its ticks from wherever it is (no soft takeover), clamped at the
        ends of the travel; the LED ring gets the new position."""
        ticks = relative_delta(b.spec.encoding, val)
        if ticks == 0:
            return
        cur = self.registry.get(b.spec.address)
        new, pos = b.relative_target(cur, ticks)
        if new == cur:
            b.rel = (pos, cur) if pos is not None else None
            if pos is None or pos in (0.0, 1.0):
                self._resend(b, cur)  # at an end: the ring (a surface that turns its own) shows where it is
            return
        stored = self._set(b, new)
        b.rel = (pos, stored) if (pos is not None and stored is not None) else None

    def _relative_echo(self, bs: list[_Bound], val: int) -> bool:
        """Whether ``val`` on a relative encoder's CC is a ring position just
        sent to it coming back (a soft thru, a surface that echoes): taken
        as ticks it would move the value, whose ring would come back too,
        for ever. Each message sent is one echo at most: a match is used
        up. ``bs``: every binding of the control (a gang shares its echoes)."""
        now = time.monotonic()
        hit = False
        for b in bs:
            live = [e for e in b.inflight if now - e[1] < ECHO_RELATIVE_S]
            if not hit:
                for i, (raw, _) in enumerate(live):
                    if raw == val:
                        del live[i]
                        hit = True
                        break
            b.inflight = live
        if hit:
            self.counters["echo_ignored"] += 1
        return hit

    def _resend(self, b: _Bound, value: Any) -> None:
        try:
            self._send_value(b, value)
        except Exception as e:  # pragma: no cover - a port may be gone
            self._error(b.spec.address, f"feedback not sent: {e}")

    def _set(self, b: _Bound, value: Any) -> Any:
        """Set ``b``'s address from its control; the stored value, or None
        when the registry refused it (counted and logged)."""
        self._tls.applying = b
        try:
            stored = self.registry.set(b.spec.address, value, source="midi")
        except (ParameterError, ValueError) as e:
            self._error(b.spec.address, str(e))
            return None
        finally:
            self._tls.applying = None
        self.counters["applied"] += 1
        self._failing.discard(b.spec.address)
        return stored

    def _error(self, address: str, msg: str) -> None:
        self.counters["errors"] += 1
        self.last_error = msg
        if address not in self._failing:  # once per address until it works again
            self._failing.add(address)
            log.warning("MIDI binding for %s: %s", address, msg)

    # -- feedback

    def _feedback(self, address: str, value: Any, source: _Bound | None, detach: bool = True) -> None:
        """``address`` changed (``value`` None: read it); ``source`` is the
        binding whose message made the change, if any. ``detach=False``:
        only resend the value (no change happened)."""
        bs = self._by_address.get(address)
        if not bs:
            return
        if value is None:
            try:
                value = self.registry.get(address)
            except (ParameterError, ValueError):
                return
        for b in bs:
            try:
                p = b.refresh()
            except (ParameterError, ValueError):
                continue
            if detach and b is not source and b.spec.takeover == "pickup" and not b.spec.relative:
                b.attached = False  # soft takeover: wait for the control to pass the new value
            if b is source and p.kind != "bool" and not b.spec.relative:
                continue  # no echo to the fader that moved it (an encoder's LED ring does follow it)
            try:
                self._send_value(b, value)
            except Exception as e:  # pragma: no cover - a port may be gone
                self._error(address, f"feedback not sent: {e}")

    def _send_value(self, b: _Bound, value: Any) -> None:
        spec = b.spec
        raw = b.raw_for(value)
        ch = spec.channel - 1
        if spec.type == "note":
            msgs = [[0x90 | ch, spec.number, 127 if raw >= 64 else 0]]
        elif spec.type == "pitch_bend":
            msgs = [[0xE0 | ch, raw & 0x7F, raw >> 7]]
        elif spec.type == "nrpn":
            # the whole sequence every time: select (99, 98), data entry MSB (6) and, 14-bit, LSB (38)
            n = spec.number
            if b.param is not None and b.param.kind == "bool":
                data = [127 if raw >= 64 else 0] + ([0] if spec.cc14 else [])
            else:
                data = [raw >> 7, raw & 0x7F] if spec.cc14 else [raw]
            msgs = [[0xB0 | ch, 99, n >> 7], [0xB0 | ch, 98, n & 0x7F], [0xB0 | ch, 6, data[0]]]
            if len(data) > 1:
                msgs.append([0xB0 | ch, 38, data[1]])
            now = time.monotonic()
            self._nrpn_sent[ch] = [*(e for e in self._nrpn_sent.get(ch, ()) if now - e[1] < ECHO_S),
                                   ([(m[1], m[2]) for m in msgs], now)][-_INFLIGHT_MAX:]
        elif spec.cc14 and b.param is not None and b.param.kind == "bool":  # on/off in the MSB, as it is read
            msgs = [[0xB0 | ch, spec.number, 127 if raw >= 64 else 0], [0xB0 | ch, spec.number + 32, 0]]
        elif spec.cc14:
            msgs = [[0xB0 | ch, spec.number, raw >> 7], [0xB0 | ch, spec.number + 32, raw & 0x7F]]
        else:
            msgs = [[0xB0 | ch, spec.number, raw]]
        now = time.monotonic()
        b.inflight = [*b.live_feedback(ECHO_RELATIVE_S if spec.relative else ECHO_S, now)[-(_INFLIGHT_MAX - 1):],
                      (raw, now)]
        sent = False
        for m in msgs:
            sent = self._jack.send(m) or sent
        for h in self._hw_out:
            if h.obj is not None:
                for m in msgs:
                    h.obj.send_message(m)
                sent = True
        if sent:
            self.counters["feedback_sent"] += 1

    # -- bindings and learn (dispatcher thread, or before it starts)

    def _install(self, specs: list[Binding]) -> None:
        old = {(b.spec): b for b in self._bound}
        bound = []
        for s in specs:
            b = old.get(s) or _Bound(s, self.registry)
            bound.append(b)
        by_control: dict[tuple, list[_Bound]] = {}
        by_address: dict[str, list[_Bound]] = {}
        for b in bound:
            by_control.setdefault(b.spec.control, []).append(b)
            by_address.setdefault(b.spec.address, []).append(b)
        self._bound, self._by_control, self._by_address = bound, by_control, by_address
        self._nrpn_channels = frozenset(b.spec.channel - 1 for b in bound if b.spec.type == "nrpn")

    def _save(self) -> None:
        _write_atomic(self.mapping_path, mapping_to_toml([b.spec for b in self._bound]))

    def _learn_event(self, ev: tuple) -> bool:
        """Offer an event to an armed learn; True when it was used."""
        typ, ch, num, val = ev
        if self._pending_nrpn is not None:
            used = self._nrpn_learn_event(ev)
            if used:
                return True
        pend = self._pending_cc14
        if pend is not None:
            lr, pch, pnum, _, first = pend
            if pnum >= 32 and typ == "cc" and ch == pch and num == pnum:
                # more LSBs alone: wait on for the MSB (a while longer, not for ever)
                self._pending_cc14 = (lr, pch, pnum, min(first + CC14_LSB_LEARN_MAX_S,
                                                         time.monotonic() + CC14_LEARN_WINDOW_S), first)
                return True
            self._pending_cc14 = None
            msb = pnum if pnum < 32 else pnum - 32
            if typ == "cc" and ch == pch and {num, pnum} == {msb, msb + 32}:
                self._learned(lr, "cc", pch, msb, cc14=True)
                return True
            # anything else: it was a 7-bit CC; this event is then dispatched as usual
            self._learned(lr, "cc", pch, pnum, cc14=False)
        with self._lock:
            lr = self._learn
        if lr is None or lr.state != "armed":
            return False
        try:
            p = self.registry.resolve(lr.address)[2]
        except ParameterError as e:
            with self._lock:
                self._learn = None
            lr.note = str(e)
            lr.finish("cancelled")
            return False
        if typ == "note" and val == 0:
            return True  # the release of the press that was learned (or of an ignored one)
        if typ == "note" and p.kind != "bool":
            lr.note = f"note {num} passed over: {lr.address} is a number; move a fader or knob"
            return True
        if typ == "pitch_bend" and p.kind == "bool":
            lr.note = f"pitch bend passed over: {lr.address} is on/off; press a button"
            return True
        if typ == "cc" and num in NRPN_CCS:
            sel = self._nrpn_sel.get(ch)
            if num in (99, 98) or (num in (6, 38, 96, 97) and sel is not None and sel.number is not None):
                # an NRPN (a console's parameter): its select (CC 99/98) comes first, then its data entry
                # (CC 6, 38 for 14-bit) or increment / decrement (96/97); or the data of an NRPN selected
                # before learn was armed. Learned as a plain CC, CC 99 bound the select, not the control
                now = time.monotonic()
                self._pending_nrpn = [lr, ch, now + NRPN_LEARN_MAX_S, None]
                return self._nrpn_learn_event(ev) or True
            if num in (101, 100):
                lr.note = (f"RPN select (CC {num}) on channel {ch + 1} passed over: RPNs (pitch bend range, "
                           "tuning) are not mapped; move a control")
                return True
            if sel is not None and sel.active == "rpn":
                lr.note = (f"CC {num} on channel {ch + 1} passed over: it is data for the RPN selected there "
                           "(RPNs are not mapped)")
                return True
            if ch in self._nrpn_channels:
                lr.note = (f"CC {num} on channel {ch + 1} passed over: channel {ch + 1} has NRPN bindings, and "
                           "CCs 6, 38 and 96..101 on it belong to NRPN")
                return True
        if typ == "cc" and num < 64 and p.kind in ("float", "int"):
            # CC n < 32 may be a 14-bit MSB (its LSB, CC n + 32, follows); CC n in 32..63 may be a
            # 14-bit LSB sent alone, as MIDI 1.0 allows while the MSB stays the same (a fader moved
            # slowly, or one already moving when learn was armed): its MSB, CC n - 32, comes next.
            # Learned at once, that LSB made a 7-bit binding that wrapped 0..127 on every MSB step
            now = time.monotonic()
            self._pending_cc14 = (lr, ch, num, now + CC14_LEARN_WINDOW_S, now)
            return True
        self._learned(lr, typ, ch, num, cc14=False)
        return True

    def _nrpn_learn_event(self, ev: tuple) -> bool:
        """Offer an event to a learn waiting on an NRPN (``_pending_nrpn``):
        True when used; False when the pending NRPN ended (learned, or
        dropped) and the event is to be handled as usual."""
        lr, pch, _, data_of = self._pending_nrpn
        data_seen = data_of is not None
        typ, ch, num, val = ev
        sel = self._nrpn_sel.get(pch)
        number = sel.number if sel is not None else None
        if typ == "cc" and ch == pch and num in (99, 98) and not data_seen:
            return True  # the rest of the select
        if typ == "cc" and ch == pch and number is not None and num in (6, 38, 96, 97):
            if num == 38:  # a data entry LSB: 14-bit
                self._nrpn_learn_end(cc14=True)
                return True
            if not data_seen:
                try:
                    kind = self.registry.resolve(lr.address)[2].kind
                except ParameterError:
                    kind = "bool"  # (_learned says why)
                if num == 6 and kind != "bool":
                    # its LSB (CC 38) may follow, as a 14-bit CC's does
                    self._pending_nrpn[2:4] = [time.monotonic() + CC14_LEARN_WINDOW_S, number]
                    return True
                self._nrpn_learn_end(cc14=False)
                return True
        # anything else (the next select, another data entry, another control): the NRPN is 7-bit, or
        # there was none
        self._nrpn_learn_end()
        return False

    def _nrpn_learn_end(self, cc14: bool = False) -> None:
        """End a learn waiting on an NRPN: bind the selected NRPN (7-bit unless
        ``cc14``), or, when no whole parameter number was selected, let the
        learn wait on for another control."""
        lr, ch, _, number = self._pending_nrpn
        self._pending_nrpn = None
        if number is None:  # no data entry yet: the selection as it stands (a select alone, then nothing)
            sel = self._nrpn_sel.get(ch)
            number = sel.number if sel is not None else None
        if number is None:
            lr.note = (f"an NRPN select on channel {ch + 1} without its other half (CC 99 and CC 98 both "
                       "select it) passed over; move the control again")
            return
        self._learned(lr, "nrpn", ch, number, cc14=cc14)

    def _announce(self, lr: Learn, doc: dict) -> None:
        doc = {**doc, "learn_id": lr.id}  # (which learn ended: the same address may be armed again)
        cbs = self.on_learned
        cbs = [] if cbs is None else [cbs] if callable(cbs) else list(cbs)
        for fn in ([lr.on_learned] if lr.on_learned else []) + cbs:
            try:
                fn(dict(doc))
            except Exception:
                log.exception("MIDI on_learned callback")

    def _learned(self, lr: Learn, typ: str, ch: int, num: int, cc14: bool) -> None:
        with self._lock:
            if self._learn is lr:
                self._learn = None
        if lr.state != "armed":
            return
        try:
            p = self.registry.resolve(lr.address)[2]
        except ParameterError as e:
            lr.note = str(e)
            lr.finish("cancelled")
            return
        spec = Binding(address=lr.address, type=typ, channel=ch + 1, number=0 if typ == "pitch_bend" else num,
                       curve=None if p.kind in ("bool", "choice") else default_curve(p), cc14=cc14,
                       takeover="pickup" if p.kind in ("float", "int") else "jump")
        keep = [b.spec for b in self._bound if b.spec.address != spec.address and b.spec.control != spec.control]
        if typ == "nrpn":
            # plain CCs 6, 38, 96..101 on the channel belong to NRPN now: their bindings would make the
            # mapping file one the next start refuses (parse_mapping)
            taken = [s for s in keep if s.channel == spec.channel and s.cc_numbers & NRPN_CCS]
            if taken:
                keep = [s for s in keep if s not in taken]
                lr.note = (f"CCs 6, 38 and 96..101 on channel {spec.channel} belong to NRPN now: the binding of "
                           f"{', '.join(f'{s.describe_control()} to {s.address!r}' for s in taken)} is removed")
                log.warning("MIDI learn: %s", lr.note)
        if cc14:
            keep = [s for s in keep if s.control != spec.lsb_control]
        # a 14-bit binding whose LSB is the control just learned would make the mapping file one the
        # next start refuses (parse_mapping): the new binding wins, as for any other control it had
        lsb_of = [s for s in keep if s.lsb_control == spec.control]
        if lsb_of:
            keep = [s for s in keep if s not in lsb_of]
            lr.note = (f"{spec.describe_control()} was the LSB of the 14-bit control of "
                       f"{', '.join(repr(s.address) for s in lsb_of)}: that binding is removed")
            log.warning("MIDI learn: %s", lr.note)
        self._install(keep + [spec])
        try:
            self._save()
        except OSError as e:
            lr.note = f"bound, but the mapping file {self.mapping_path} was not saved: {e}"
            log.error("MIDI learn: %s", lr.note)
        log.info("MIDI learn: %s -> %s", spec.describe_control(), spec.address)
        lr.finish("learned", spec)
        self._announce(lr, spec.to_dict())
        self._feedback(spec.address, None, None, detach=False)
