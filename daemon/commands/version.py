from . import PROTOCOL_VERSION, Command, commands


class Version(Command):
    """Versions: ``quietcast`` (the package), ``protocol`` (1) and the list
    of ``commands`` this daemon understands."""

    name = "version"
    args = {}

    def execute(self, ctx, args):
        from quietcast.models.common import quietcast_version

        return {"quietcast": quietcast_version(), "protocol": PROTOCOL_VERSION, "commands": list(commands())}
