"""``python -m quietcast.daemon.commands`` prints the protocol reference
generated from the command docstrings (the README's protocol section)."""

from . import protocol_markdown

print(protocol_markdown(), end="")
