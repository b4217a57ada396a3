from . import Arg, Command


class LoadChain(Command):
    """Replace a ``channel``'s post-chain with ``chain`` (a chain file path on
    the daemon's machine, or a bundled chain name; ``""`` removes it). The
    chain is checked and built first: a bad chain is refused with every
    problem (code ``failed``) and the old one keeps running. When the new
    chain's latency fits in the daemon's declared latency the swap happens
    at a hop boundary with no dropout; otherwise the daemon re-opens its
    JACK client to declare the new latency (a short dropout on every
    channel). Result: ``latency_frames`` and whether it ``reopened``."""

    name = "load_chain"
    args = {"channel": Arg("str", doc="channel name"),
            "chain": Arg("str", doc="chain file path or bundled name; \"\" for none")}

    def execute(self, ctx, args):
        return ctx.load_chain(args["channel"], args["chain"])
