from . import Command


class Reload(Command):
    """Re-read the config file (as SIGHUP does). An invalid file is refused
    with every problem listed (code ``failed``, ``details.problems``) and
    the running config stays. Otherwise changed parameter values are
    applied live, all or none (a value the running model refuses, such as a
    pause gate under `dsp`, fails the reload before any is applied); a
    change to the channels, their chains or the engine rebuilds the engine
    (a short dropout; connections made by hand are made again). A rebuild
    keeps each channel's live values, except those the file changes, which
    it applies. Live pause-gate values a new model has no gate for are
    dropped (logged). A rebuild the new config cannot run (a new channel's
    pause gate under `dsp`) is refused (``failed``, with the reason), also
    while the JACK server is away, and the old config is rebuilt and keeps
    running. Result: ``changed`` (the channel values the file changed) and
    ``rebuilt``."""

    name = "reload"
    args = {}

    def execute(self, ctx, args):
        return ctx.reload()
