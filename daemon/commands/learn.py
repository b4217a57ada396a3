from . import Arg, Command
from ..errors import ControlError


class Learn(Command):
    """MIDI learn: arm ``address``; the next MIDI control moved (CC, note,
    pitch bend or NRPN, on any MIDI input) is bound to it and saved to the
    mapping file. Replies at once with ``armed``, ``timeout_s`` and
    ``learn_id`` (also in its ``event.learn``, and in ``status``); the
    binding is announced as ``event.learn`` on the event stream (``quietcast
    ctl learn`` waits for it); a learn that ends without one is announced
    too, with ``timed_out: true`` or ``cancelled: true`` and a ``note``
    (disarmed, replaced by another learn, MIDI stopped). ``cancel: true``
    disarms. While MIDI control
    is not running the error (``unavailable``) says why, as ``status``'s
    ``midi.problem`` does."""

    name = "learn"
    args = {"address": Arg("str", required=False, doc="parameter address to bind"),
            "timeout_s": Arg("number", required=False, doc="give up after this long (default 30)", default=30),
            "cancel": Arg("bool", required=False, doc="disarm instead")}

    def execute(self, ctx, args):
        if ctx.midi is None:
            raise ControlError("unavailable", f"MIDI is not running: {ctx.daemon.midi_not_running()}")
        if args.get("cancel"):
            ctx.midi.cancel_learn()
            return {"armed": None}
        if "address" not in args:
            raise ControlError("bad_args", "learn: give 'address' (or cancel: true)")
        ctx.registry.resolve(args["address"])  # unknown addresses are refused now, not at the move
        t = float(args["timeout_s"])
        if not 1 <= t <= 600:
            raise ControlError("bad_args", f"learn: timeout_s {t:g} is out of range [1, 600] s")
        lr = ctx.midi.learn(args["address"], timeout_s=t)
        return {"armed": args["address"], "timeout_s": t, "learn_id": lr.id}
