from . import Command


class SaveState(Command):
    """Write every parameter value (and MIDI learn bindings) to the state
    file now, atomically (write, fsync, rename). The daemon also saves by
    itself shortly after each change. Result: ``path`` and ``params``
    (how many values were saved). A write the system refuses (a read-only
    or full file system) is code ``failed``, naming the file and the
    reason."""

    name = "save_state"
    args = {}

    def execute(self, ctx, args):
        return ctx.save_state()
