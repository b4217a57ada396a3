from . import Arg, Command


class List(Command):
    """Every parameter address with its ``type``, ``unit``, ``min``/``max``
    (or ``choices``), ``default`` and current ``value``: channel parameters
    (``host.strength``) and every parameter of every post-chain stage and
    hosted plugin (``host.chain.comp.threshold_db``). ``prefix`` limits the
    list to one channel or stage (``host``, ``host.chain.comp``)."""

    name = "list"
    args = {"prefix": Arg("str", required=False, doc="only addresses under this prefix")}

    def execute(self, ctx, args):
        return ctx.registry.list(args.get("prefix", ""))
