from . import Arg, Command


class Bypass(Command):
    """Bypass a ``channel`` (``on`` true/false; toggles when ``on`` is left
    out): the output becomes the input delayed by the same declared
    latency, bit-exact, crossfaded over one hop. Result: the new state."""

    name = "bypass"
    param = "bypass"
    args = {"channel": Arg("str", doc="channel name"),
            "on": Arg("bool", required=False, doc="true or false; toggle when absent")}

    def execute(self, ctx, args):
        addr = f"{args['channel']}.{self.param}"
        on = args.get("on")
        if on is None:
            on = not ctx.registry.get(addr)
        return ctx.registry.set(addr, on, source="zmq")
