"""quietcast.bridge: effect chains (pedalboard built-ins, hosted VST3
plugins, quietcast suppressors) and offline processing of files.

The public API::

    from quietcast.bridge import Chain, process_files
    chain = Chain.from_toml("voice.toml")     # or Chain([...]) / Chain.default()
    proc = chain.processor(48000, 2)           # streaming, proc.latency samples
    y = chain.process_array(x, 48000)          # whole array, latency removed
"""

from .chain import Chain, ChainProcessor, StageSpec, bundled_chains
from .errors import (
    AudioFileError, BridgeError, ChainSpecError, ParameterError, PluginLoadError, Problem, UnknownParameterError,
)
from .params import Param, ParamSet

__all__ = [
    "Chain", "ChainProcessor", "StageSpec", "bundled_chains",
    "AudioFileError", "BridgeError", "ChainSpecError", "ParameterError", "PluginLoadError", "Problem",
    "UnknownParameterError",
    "Param", "ParamSet",
]
