from . import Arg
from .bypass import Bypass


class Mute(Bypass):
    """Mute a ``channel`` (``on`` true/false; toggles when ``on`` is left
    out): its outputs fade to silence over one hop. Result: the new
    state."""

    name = "mute"
    param = "mute"
    args = {"channel": Arg("str", doc="channel name"),
            "on": Arg("bool", required=False, doc="true or false; toggle when absent")}
