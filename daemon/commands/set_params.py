from . import Arg, Command
from ..errors import ControlError


class Set(Command):
    """Set one parameter (``address`` and ``value``) or several at once
    (``values``: address -> value; all are checked before any is applied).
    The value is checked against the address's range exactly as the config
    and MIDI are; the result is the value as stored (the object of stored
    values for ``values``). Every change is published as ``event.param``
    and moves mapped MIDI controllers (feedback). Numbers ramp over one hop
    (10 ms): no zipper noise. In a plugin stage with ``live_latency = true``,
    values that would lengthen the plugin's latency beyond what the daemon
    declared are refused (code ``out_of_range``, naming the latency needed and
    the ``min_latency`` to give); a shorter one is padded; several values of
    such a stage are judged by the latency they bring together."""

    name = "set"
    args = {"address": Arg("str", required=False, doc="parameter address, e.g. host.strength"),
            "value": Arg("value", required=False, nullable=True,
                         doc="number, boolean, a string such as \"-inf\", or null (a channel's pause gate: the "
                             "engine's value)"),
            "values": Arg("object", required=False, doc="address -> value, applied together")}

    def execute(self, ctx, args):
        reg = ctx.registry
        if "values" in args:
            if "address" in args or "value" in args:
                raise ControlError("bad_args", "set: give either address and value, or values")
            return reg.set_many(args["values"], source="zmq")  # (checks everything first)
        if "address" not in args or "value" not in args:
            raise ControlError("bad_args", "set: give 'address' and 'value' (or 'values')")
        return reg.set(args["address"], args["value"], source="zmq")
