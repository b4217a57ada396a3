from . import Command


class Reload(Command):
    """Re-read the config file (as SIGHUP does). An invalid file is refused
    with every problem listed (code ``failed``, ``details.problems``) and
    the running config stays. Otherwise changed parameter values are
    applied live; a change to the channels, their chains or the engine
    rebuilds the engine (a short dropout). Result: ``changed`` (what was
    applied) and ``rebuilt``."""

    name = "reload"
    args = {}

    def execute(self, ctx, args):
        return ctx.reload()
