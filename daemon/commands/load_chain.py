from . import Arg, Command


class LoadChain(Command):
    """Replace a ``channel``'s post-chain with ``chain`` (a chain file path on
    the daemon's machine, or a bundled chain name; ``""`` removes it). The
    chain is checked and built first: a bad chain is refused with every
    problem (code ``failed``) and the old one keeps running. When the new
    chain's latency fits in the daemon's declared latency the swap happens
    with no dropout and no click: the old chain stays on air while the new
    one fills with the live signal (the chain latency budget plus 100 ms),
    then the two crossfade over 20 ms; the channel keeps the declared
    latency.
    Otherwise the daemon re-opens its JACK client to declare the new
    latency (a short dropout on every channel). Result: ``latency_frames``
    and whether it ``reopened``."""

    name = "load_chain"
    args = {"channel": Arg("str", doc="channel name"),
            "chain": Arg("str", doc="chain file path or bundled name; \"\" for none")}

    blocking = True

    def execute(self, ctx, args):
        return ctx.load_chain(args["channel"], args["chain"])
