from . import Arg, Command
from ..errors import ControlError


class Get(Command):
    """The current value of one ``address``, or of several (``addresses``:
    result is an object address -> value)."""

    name = "get"
    args = {"address": Arg("str", required=False, doc="one parameter address"),
            "addresses": Arg("list[str]", required=False, doc="several addresses")}

    def execute(self, ctx, args):
        if "address" in args:
            return ctx.registry.get(args["address"])
        if "addresses" in args:
            return {a: ctx.registry.get(a) for a in args["addresses"]}
        raise ControlError("bad_args", "get: give 'address' or 'addresses'")
