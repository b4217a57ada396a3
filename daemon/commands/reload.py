from . import Command


class Reload(Command):
    """Re-read the config file (as SIGHUP does), and the chain files it
    names. An invalid file is refused with every problem listed (code
    ``failed``, ``details.problems``) and the running config stays.
    Otherwise changed parameter values are applied live, all or none (a
    value the running model refuses, such as a pause gate under `dsp`,
    fails the reload before any is applied). A channel whose chain the
    reload changes (another file, or the same file edited) gets the new
    chain as ``load_chain`` puts one there: with no dropout and a crossfade
    when it fits in the declared latency; the file's chain replaces one
    ``load_chain`` put on that channel. Live chain values survive, except
    those the edited chain file changes (by stage and parameter). New
    connection rules (``connect_in``, ``connect_out``) connect the ports
    they match at once, with no rebuild; a rule taken out leaves the
    connections it made (take them down by hand). A change to the
    channels' list, names or stems, to the engine, or to the JACK client
    name, server or (under PipeWire) ``pipewire_quantum`` rebuilds the
    engine (a short dropout; connections made by hand are made again). A rebuild keeps each channel's live values and
    ``load_chain`` choices, except those the file changes, which it
    applies. Live pause-gate values a new model has no gate for are
    dropped (logged). A rebuild the new config cannot run (a new channel's
    pause gate under `dsp`) is refused (``failed``, with the reason), also
    while the JACK server is away, and the old config is rebuilt and keeps
    running. The MIDI mapping file is read again too (a broken one keeps
    the bindings that run, logged); MIDI control that is enabled but not
    running, because its mapping file was broken at the start, starts
    (``status``'s ``midi.problem`` says why when it still cannot); a
    changed ``[midi]`` section (off, other ports, another mapping file)
    stops MIDI control and starts it again with the new settings. Result:
    ``changed`` (the channel values the file changed, ``CHANNEL.chain``
    for each new chain, ``CHANNEL.connect_in``/``connect_out`` for new
    rules) and ``rebuilt``."""

    name = "reload"
    args = {}

    blocking = True

    def execute(self, ctx, args):
        return ctx.reload()
