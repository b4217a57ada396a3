from . import PROTOCOL_VERSION, Command, commands


class Version(Command):
    """Versions: ``quietcast`` (the package), ``protocol`` (1) and the list
    of ``commands`` this daemon understands."""

    name = "version"
    args = {}

    def execute(self, ctx, args):
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("quietcast")
        except PackageNotFoundError:  # pragma: no cover
            v = "unknown"
        return {"quietcast": v, "protocol": PROTOCOL_VERSION, "commands": list(commands())}
