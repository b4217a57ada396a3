"""The daemon's config schema: the shipped default, every error path, all
problems at once, the effective config and its TOML round trip."""

from __future__ import annotations

import json
import math
import os
import textwrap
import tomllib

import numpy as np
import pytest

from quietcast.bridge import BridgeError, Chain, Param, ParameterError
from quietcast.daemon import config as C
from quietcast.daemon.config import (
    DEFAULT_CONFIG_PATH, ChannelConfig, Config, ConfigError, EngineConfig, JackConfig,
    cmd_config_check, cmd_config_schema, cmd_config_show, config_from_dict, describe_schema,
    dump_toml, load_config, parse_config, to_toml,
)

ONE = '[[channel]]\nname = "host"\n'


def cfg(text: str, **kw) -> Config:
    return parse_config(textwrap.dedent(text), **kw)


def problems(text: str, **kw) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        cfg(text, **kw)
    return [str(p) for p in ei.value.problems]


def one_problem(text: str, **kw) -> str:
    ps = problems(text, **kw)
    assert len(ps) == 1, ps
    return ps[0]


# --------------------------------------------------------------------------
# the shipped default and defaults


def test_shipped_default_loads():
    assert os.path.basename(DEFAULT_CONFIG_PATH) == "default.toml"
    assert os.path.dirname(DEFAULT_CONFIG_PATH) == os.path.dirname(C.__file__)
    c = load_config(DEFAULT_CONFIG_PATH)
    assert c.channel_names == ["host", "guest"]
    assert c.path == DEFAULT_CONFIG_PATH
    assert c.jack == JackConfig() and c.engine == EngineConfig()
    assert c.channel("host").connect_in == ("system:capture_1",)
    assert c.channel("guest").background_db == -30.0
    assert C.default_config() == c


def test_shipped_default_states_the_schema_defaults():
    """default.toml says 'the values below are the defaults': keep it true."""
    with open(DEFAULT_CONFIG_PATH, "rb") as f:
        doc = tomllib.load(f)
    schema = describe_schema()
    for section in ("jack", "engine"):
        # a key whose default is the model's own (None) is left out of the file
        assert doc[section] == {k["name"]: k["default"] for k in schema[section] if k["default"] is not None}, section
    assert "max_attenuation_db" not in doc["engine"]
    host = doc["channel"][0]
    for k in schema["channel"]:
        if k["default"] is None and k["name"] != "name":  # left to the engine: left out, as in the file
            assert k["name"] not in host, k["name"]
        elif k["name"] not in ("name", "connect_in"):
            assert host[k["name"]] == k["default"], k["name"]


def test_dataclass_defaults_match_schema():
    schema = describe_schema()
    for cls, section in ((JackConfig, "jack"), (EngineConfig, "engine")):
        assert cls().__dict__ == {k["name"]: k["default"] for k in schema[section]}
    ch = ChannelConfig("x").to_dict()
    for k in schema["channel"]:
        if k["name"] != "name":
            assert ch.get(k["name"]) == k["default"], k["name"]  # pause_db: None, left out


def test_minimal_config_fills_in_defaults():
    c = cfg(ONE)
    assert c.jack == JackConfig() and c.engine == EngineConfig()
    assert c.channels == [ChannelConfig("host")]
    ch = c.channels[0]
    assert ch.chain == "" and ch.chain_spec is None and ch.background_db == -math.inf
    assert ch.ports() == {"in": "host_in", "out": "host_out"}
    assert c.path is None


@pytest.mark.parametrize("model", ["dsp", "neural", "neural-clean"])
def test_engine_strength_left_out_is_the_models_own(model):
    """No max_attenuation_db in the file: the engine takes the model's
    default strength (what `quietcast models` lists); a value given wins."""
    from quietcast.daemon.engine import Engine
    from quietcast.models import create_suppressor

    c = cfg(f'[engine]\nmodel = "{model}"\n' + ONE)
    assert c.engine.max_attenuation_db is None
    assert "max_attenuation_db" not in c.to_dict()["engine"]
    want = create_suppressor(model, 1).PARAMS["strength_db"][2]
    e = Engine(c.channels, 48_000, model=model, max_attenuation_db=c.engine.max_attenuation_db)
    assert e.max_attenuation_db == want
    c = cfg(f'[engine]\nmodel = "{model}"\nmax_attenuation_db = 7\n' + ONE)
    e = Engine(c.channels, 48_000, model=model, max_attenuation_db=c.engine.max_attenuation_db)
    assert e.max_attenuation_db == 7.0


def test_engine_pitch_filter_left_out_is_the_models_own():
    """engine.pitch_filter left out: the neural model's own (its bundle's
    default); a value given reaches the suppressor; a model without a
    pitch filter refuses one, naming it; out of range names the range."""
    from quietcast.bridge.errors import ParameterError
    from quietcast.daemon.engine import Engine
    from quietcast.models import create_suppressor

    c = cfg('[engine]\nmodel = "neural"\n' + ONE)
    assert c.engine.pitch_filter is None and "pitch_filter" not in c.to_dict()["engine"]
    want = create_suppressor("neural", 1).PARAMS["pitch_filter"][2]
    assert want == 0.5
    e = Engine(c.channels, 48_000, model="neural", pitch_filter=c.engine.pitch_filter)
    assert e.sup.suppressor.pitch_filter == want == e.sup.values["pitch_filter"]
    c = cfg('[engine]\nmodel = "neural"\npitch_filter = 0\n' + ONE)
    e = Engine(c.channels, 48_000, model="neural", pitch_filter=c.engine.pitch_filter)
    assert e.sup.suppressor.pitch_filter == 0.0
    e.sup.set_param("pitch_filter", 0.8)
    assert e.sup.suppressor.pitch_filter == 0.8
    with pytest.raises(ParameterError, match=r"pitch_filter: model 'dsp' has no pitch filter"):
        Engine(c.channels, 48_000, model="dsp", pitch_filter=0.5)
    assert "pitch_filter: value 2 is out of range [0, 1]" in one_problem('[engine]\npitch_filter = 2\n' + ONE)


@pytest.mark.parametrize("key, own, given, bad, allowed", [
    ("pause_db", None, 12.5, "61", "[0, 60]"),  # own None: the bundle's default depth
    ("pause_threshold", 0.3, 0.12, "1.5", "[0.01, 1]"),
])
def test_engine_pause_gate_settings_left_out_are_the_models_own(key, own, given, bad, allowed):
    """engine.pause_db and engine.pause_threshold left out: the neural
    model's own (its bundle's default); a value given reaches the
    suppressor; a model without a pause head refuses one, naming it; out
    of range names the range."""
    from quietcast.bridge.errors import ParameterError
    from quietcast.daemon.engine import Engine
    from quietcast.models import create_suppressor

    c = cfg('[engine]\nmodel = "neural"\n' + ONE)
    assert getattr(c.engine, key) is None and key not in c.to_dict()["engine"]
    want = create_suppressor("neural", 1).PARAMS["pause_db"][2] if own is None else own
    e = Engine(c.channels, 48_000, model="neural", **{key: getattr(c.engine, key)})
    assert getattr(e.sup.suppressor, key) == want == e.sup.values[key]
    c = cfg(f'[engine]\nmodel = "neural"\n{key} = {given}\n' + ONE)
    assert c.to_dict()["engine"][key] == given
    e = Engine(c.channels, 48_000, model="neural", **{key: getattr(c.engine, key)})
    assert getattr(e.sup.suppressor, key) == given
    with pytest.raises(ParameterError, match=rf"{key}: model 'dsp' has no pause head"):
        Engine(c.channels, 48_000, model="dsp", **{key: given})
    assert f"{key}: value {bad} is out of range {allowed}" in one_problem(f'[engine]\n{key} = {bad}\n' + ONE)


@pytest.mark.parametrize("key, given, bad, allowed, per_channel", [
    ("pause_db", 12.5, "61", "[0, 60]", "pause_db_per_channel"),
    ("pause_threshold", 0.12, "0", "[0.01, 1]", "pause_threshold_per_channel"),
])
def test_channel_pause_gate_settings(key, given, bad, allowed, per_channel):
    """A channel's pause_db and pause_threshold: left out, the engine's
    (the second channel); given, that channel's in the suppressor from
    the first hop; a model without a pause gate refuses one, naming the
    channel; out of range names the range."""
    from quietcast.bridge.errors import ParameterError
    from quietcast.daemon.engine import Engine

    two = f'[[channel]]\nname = "host"\n{key} = {given}\n[[channel]]\nname = "guest"\n'
    c = cfg('[engine]\nmodel = "neural"\n' + two)
    assert getattr(c.channels[0], key) == given and getattr(c.channels[1], key) is None
    assert c.to_dict()["channel"][0][key] == given and key not in c.to_dict()["channel"][1]
    e = Engine(c.channels, 48_000, model="neural")
    e.process_hop(np.zeros((2, e.hop), np.float32))
    got = getattr(e.sup.suppressor, per_channel).tolist()
    assert got == pytest.approx([given, e.gate_defaults[key]]) and e.gate_defaults[key] != given
    with pytest.raises(ParameterError, match=rf"host\.{key}: model 'dsp' has no pause gate"):
        Engine(c.channels, 48_000, model="dsp")
    assert f"{key}: value {bad} is out of range {allowed}" in one_problem(
        f'[[channel]]\nname = "host"\n{key} = {bad}\n')


def test_ints_where_floats_are_expected():
    c = cfg("""
        [engine]
        max_attenuation_db = 20
        safety_ms = 0
        [[channel]]
        name = "host"
        strength = 1
        output_gain_db = -6
        background_db = -40
    """)
    assert c.engine.max_attenuation_db == 20.0 and isinstance(c.engine.max_attenuation_db, float)
    ch = c.channel("host")
    assert (ch.strength, ch.output_gain_db, ch.background_db) == (1.0, -6.0, -40.0)
    assert all(isinstance(v, float) for v in (ch.strength, ch.output_gain_db, ch.background_db))
    # an integral float is fine for an int key
    assert cfg("[jack]\nreconnect_interval_ms = 750.0\n" + ONE).jack.reconnect_interval_ms == 750


def test_stems_ports_and_gains():
    c = cfg(ONE + "stems = true\ninput_gain_db = 6\noutput_gain_db = -inf\nbackground_db = -20\n")
    ch = c.channels[0]
    assert ch.ports() == {"in": "host_in", "out": "host_out", "voice": "host_voice", "background": "host_background"}
    assert ch.input_gain == pytest.approx(10 ** (6 / 20))
    assert ch.output_gain == 0.0
    assert ch.background_gain == pytest.approx(0.1)


def test_resolved_server():
    assert JackConfig(server="live").resolved_server({}) == "live"
    assert JackConfig().resolved_server({"JACK_DEFAULT_SERVER": "studio"}) == "studio"
    assert JackConfig().resolved_server({}) == "default"


def test_config_channel_lookup_suggests():
    c = cfg(ONE + '[[channel]]\nname = "guest"\n')
    assert c.channel("guest").name == "guest"
    with pytest.raises(ParameterError, match=r"no channel of that name \(did you mean 'guest'\?\); channels: host, guest"):
        c.channel("gust")


# --------------------------------------------------------------------------
# errors, one at a time


def test_config_error_is_bridge_error_and_value_error():
    with pytest.raises(ConfigError) as ei:
        cfg("[jack]\n")
    assert isinstance(ei.value, BridgeError) and isinstance(ei.value, ValueError)
    assert str(ei.value).startswith("config: 1 problem\n  - ")


def test_unknown_key_did_you_mean():
    p = one_problem(ONE + "strenght = 0.5\n")
    assert p == "[channel 'host'] strenght: unknown key (did you mean 'strength'?)"
    p = one_problem("[jack]\nclient = 'x'\n" + ONE)
    assert p.startswith("[jack] client: unknown key (did you mean 'client_name'?)")


def test_unknown_key_without_close_match_lists_known_keys():
    p = one_problem("[engine]\nwhatever = 1\n" + ONE)
    assert p.startswith("[engine] whatever: unknown key; known keys: model, max_attenuation_db,")


def test_unknown_section_did_you_mean():
    p = one_problem("[jak]\nclient_name = 'x'\n" + ONE)
    assert p.startswith("[jak]: unknown section (did you mean 'jack'?)")
    p = one_problem("[[channels]]\nname = 'x'\n" + ONE)
    assert p.startswith("[channels]: unknown section (did you mean 'channel'?)")


def test_top_level_key_belongs_in_a_section():
    p = one_problem('client_name = "x"\n' + ONE)
    assert "client_name" in p and "belongs in the [jack] section" in p
    p = one_problem('strength = 0.5\n' + ONE)
    assert "belongs in the [[channel]] section" in p


@pytest.mark.parametrize("text, where, param, value", [
    ("[jack]\nreconnect_interval_ms = 20\n", "[jack]", Param("reconnect_interval_ms", "int", 500, 50, 10_000, "ms"), 20),
    ("[engine]\nmax_attenuation_db = 80\n", "[engine]", Param("max_attenuation_db", "float", 15.0, 0, 60, "dB"), 80),
    ("[engine]\nthreads = 0\n", "[engine]", Param("threads", "int", 1, 1, 64), 0),
    ("[engine]\nthreads = 2.5\n", "[engine]", Param("threads", "int", 1, 1, 64), 2.5),
    ("[engine]\nsafety_ms = -1\n", "[engine]", Param("safety_ms", "float", 10.0, 0, 200, "ms"), -1),
])
def test_out_of_range_messages_match_param_check(text, where, param, value):
    p = one_problem(text + ONE)
    with pytest.raises(ParameterError) as ei:
        param.check(value)
    assert p == f"{where} {ei.value}"


@pytest.mark.parametrize("key, value, param", [
    ("strength", "1.5", Param("strength", "float", 1.0, 0.0, 1.0)),
    ("input_gain_db", "30", Param("input_gain_db", "float", 0.0, -60.0, 24.0, "dB")),
    ("output_gain_db", "25", Param("output_gain_db", "float", 0.0, -96.0, 24.0, "dB", allow_neg_inf=True)),
    ("output_gain_db", "-100", Param("output_gain_db", "float", 0.0, -96.0, 24.0, "dB", allow_neg_inf=True)),
    ("background_db", "1", Param("background_db", "float", 0.0, -96.0, 0.0, "dB", allow_neg_inf=True)),
])
def test_channel_ranges(key, value, param):
    p = one_problem(ONE + f"{key} = {value}\n")
    with pytest.raises(ParameterError) as ei:
        param.check(float(value))
    assert p == f"[channel 'host'] {ei.value}"
    assert "out of range" in p


def test_string_where_number_expected():
    p = one_problem(ONE + 'strength = "0.5"\n')
    assert p.startswith("[channel 'host'] strength: value '0.5' is a string, not a number")
    assert "[0, 1]" in p
    p = one_problem('[jack]\nreconnect_interval_ms = "500"\n' + ONE)
    assert "is a string, not a number" in p and "[50, 10000] ms" in p


def test_wrong_types():
    ps = problems(ONE + textwrap.dedent("""\
        bypass = 1
        mute = "false"
        stems = true
        strength = true
        connect_in = "system:capture_1"
        connect_out = ["system:playback_1", 3]
        chain = 5
    """))
    assert ps == [
        "[channel 'host'] bypass: value 1 is not a boolean (true or false)",
        "[channel 'host'] mute: value 'false' is not a boolean (true or false)",
        "[channel 'host'] strength: value True is not a number; allowed range [0, 1]",
        "[channel 'host'] connect_in: value 'system:capture_1' is not a list of strings; write e.g. connect_in = [\"system:capture_1\"]",
        "[channel 'host'] connect_out: item 2 (3) is not a string",
        "[channel 'host'] chain: value 5 is not a string",
    ]


def test_section_of_wrong_shape():
    assert one_problem("jack = 5\n" + ONE).startswith("[jack]: must be a table")
    assert "single brackets" in one_problem("[[jack]]\nclient_name = 'x'\n" + ONE)


def test_single_bracket_channel_is_reported_and_still_checked():
    ps = problems('[channel]\nname = "host"\nstrength = 3\n')
    assert ps[0] == "[channel]: write each channel under [[channel]] (double brackets), not [channel]"
    assert ps[1].startswith("[channel 'host'] strength: value 3 is out of range [0, 1]")
    assert len(ps) == 2


@pytest.mark.parametrize("text", ["", "[jack]\n", "channel = []\n"])
def test_zero_channels(text):
    assert one_problem(text).startswith("[[channel]]: no channels: add at least one")


def test_too_many_channels():
    text = "".join(f'[[channel]]\nname = "c{i}"\n' for i in range(C.MAX_CHANNELS + 1))
    assert one_problem(text) == f"[[channel]]: {C.MAX_CHANNELS + 1} channels: at most {C.MAX_CHANNELS} are allowed"
    assert len(cfg("".join(f'[[channel]]\nname = "c{i}"\n' for i in range(C.MAX_CHANNELS))).channels) == C.MAX_CHANNELS


def test_channel_not_a_table():
    assert one_problem("channel = [1]\n").startswith("[channel 1]: must be a table of keys")


def test_duplicate_channel_names():
    ps = problems(ONE + '[[channel]]\nname = "guest"\n' + ONE)
    assert ps == ["[channel 3] name: 'host' is already used by channel 1; channel names must be unique"]


@pytest.mark.parametrize("name", ["Host", "1st", "host-2", "", "a" * 33, "höst"])
def test_bad_channel_names(name):
    p = one_problem(f'[[channel]]\nname = "{name}"\n')
    assert p == f"[channel 1] name: value {name!r} is not allowed: use 1-32 lower-case letters, digits and '_', starting with a letter"


def test_missing_channel_name():
    ps = problems('[[channel]]\nstrength = 0.5\n[[channel]]\nname = "ok"\nstrenght = 1\n')
    assert ps[0].startswith("[channel 1] name: missing (required)")
    assert ps[1] == "[channel 'ok'] strenght: unknown key (did you mean 'strength'?)"


@pytest.mark.parametrize("client, ok", [("quietcast", True), ("my studio", True), ("a" * 48, True),
                                        ("a:b", False), ("", False), ("a" * 49, False), ("a\tb", False)])
def test_client_name(client, ok):
    text = f"[jack]\nclient_name = {json.dumps(client)}\n" + ONE
    if ok:
        assert cfg(text).jack.client_name == client
    else:
        assert one_problem(text).startswith(f"[jack] client_name: value {client!r} is not allowed")


def test_server_name():
    assert cfg('[jack]\nserver = "live"\n' + ONE).jack.server == "live"
    assert "is not allowed" in one_problem('[jack]\nserver = "a/b"\n' + ONE)


def test_engine_device():
    assert cfg(ONE).engine.device == "auto"
    for ok in ("cpu", "cuda", "cuda:1", "auto"):
        assert cfg(f'[engine]\ndevice = "{ok}"\n' + ONE).engine.device == ok
    p = one_problem('[engine]\ndevice = "gpu"\n' + ONE)
    assert p.startswith("[engine] device:") and "one of auto, cpu, cuda, cuda:N" in p


def test_unknown_model_did_you_mean():
    p = one_problem('[engine]\nmodel = "dps"\n' + ONE)
    from quietcast.models import available_models

    assert p.startswith("[engine] model: value 'dps' is not one of " + ", ".join(repr(m) for m in available_models()))
    assert "(did you mean 'dsp'" in p and "nor a bundle folder" in p
    assert cfg('[engine]\nmodel = "passthrough"\n' + ONE).engine.model == "passthrough"


def test_model_as_a_bundle_folder(tmp_path):
    """A path is a neural bundle folder, relative to the config file, its
    checksum checked when the config is read."""
    import shutil

    from quietcast.models.bundle import ASSETS

    shutil.copytree(ASSETS / "clean", tmp_path / "models" / "mine")
    c = parse_config('[engine]\nmodel = "./models/mine"\n' + ONE, base_dir=str(tmp_path))
    assert c.engine.model == str(tmp_path / "models" / "mine")
    p = one_problem('[engine]\nmodel = "./nowhere"\n' + ONE)
    assert p.startswith("[engine] model: './nowhere': no model bundle at") and "config.json" in p
    w = tmp_path / "models" / "mine" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"x")
    with pytest.raises(ConfigError, match="sha256 mismatch"):
        parse_config('[engine]\nmodel = "models/mine"\n' + ONE, base_dir=str(tmp_path))


def test_backlog_must_exceed_safety():
    p = one_problem("[engine]\nsafety_ms = 100\nmax_backlog_ms = 50\n" + ONE)
    assert p.startswith("[engine] max_backlog_ms: value 50 must be more than safety_ms (100 ms)")
    assert cfg("[engine]\nsafety_ms = 100\nmax_backlog_ms = 100.5\n" + ONE).engine.max_backlog_ms == 100.5


def test_connect_patterns():
    c = cfg(ONE + 'connect_in = ["system:capture_1", "player:out_*"]\nconnect_out = ["rec:in_[12]"]\n')
    assert c.channels[0].connect_in == ("system:capture_1", "player:out_*")
    assert c.channels[0].connect_out == ("rec:in_[12]",)
    p = one_problem(ONE + 'connect_out = ["system:playback_1", "playback_2"]\n')
    assert p.startswith("[channel 'host'] connect_out: item 2 ('playback_2') is not a JACK port pattern: write CLIENT:PORT")


def test_invalid_toml_has_line_info():
    p = one_problem('[jack]\nclient_name = "x"\n[[channel]\nname = "host"\n')
    assert p.startswith("not valid TOML: ") and "line 3" in p


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "nope.toml")
    assert ei.value.source.endswith("nope.toml")
    assert [str(p) for p in ei.value.problems] == ["cannot read config file: No such file or directory"]
    with pytest.raises(ConfigError, match="cannot read config file: Is a directory"):
        load_config(tmp_path)


def test_non_utf8_file(tmp_path):
    f = tmp_path / "latin1.toml"
    f.write_bytes('[jack]\nclient_name = "Sébastien"\n'.encode("latin-1") + ONE.encode())
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    assert [str(p) for p in ei.value.problems] == ["config file is not UTF-8 text (byte 0xe9 on line 2)"]
    assert str(ei.value).startswith(f"{f}: 1 problem\n")


def test_not_a_table():
    with pytest.raises(ConfigError, match="must be a TOML table"):
        config_from_dict([1, 2])


# --------------------------------------------------------------------------
# all at once


def test_five_mistakes_reported_at_once(tmp_path):
    f = tmp_path / "quietcast.toml"
    f.write_text(textwrap.dedent("""\
        [jak]
        client_name = "studio"

        [engine]
        max_attenuation_db = "15"

        [[channel]]
        name = "host"
        strength = 1.5

        [[channel]]
        name = "guest"
        strenght = 0.5

        [[channel]]
        name = "host"
    """))
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    e = ei.value
    assert len(e.problems) == 5
    text = str(e)
    assert text.startswith(f"{f}: 5 problems\n")
    for line in [
        "  - [jak]: unknown section (did you mean 'jack'?)",
        "  - [engine] max_attenuation_db: value '15' is a string, not a number",
        "  - [channel 'host'] strength: value 1.5 is out of range [0, 1]",
        "  - [channel 'guest'] strenght: unknown key (did you mean 'strength'?)",
        "  - [channel 3] name: 'host' is already used by channel 1",
    ]:
        assert line in text, (line, text)


# --------------------------------------------------------------------------
# -inf


def test_neg_inf_handling():
    c = cfg(ONE + "output_gain_db = -inf\nbackground_db = -inf\n")
    assert c.channels[0].output_gain_db == -math.inf and c.channels[0].output_gain == 0.0
    assert c.channels[0].background_gain == 0.0
    assert "background_db = -inf" in dump_toml(c) and "output_gain_db = -inf" in dump_toml(c)
    assert parse_config(dump_toml(c)) == c
    # not where -inf makes no sense, never +inf or nan, never as a string
    assert one_problem(ONE + "input_gain_db = -inf\n") == "[channel 'host'] input_gain_db: value -inf is out of range [-60, 24] dB"
    assert one_problem(ONE + "output_gain_db = inf\n") == "[channel 'host'] output_gain_db: value inf is out of range [-96, 24] or -inf dB"
    assert "NaN is not allowed" in one_problem(ONE + "background_db = nan\n")
    p = one_problem(ONE + 'background_db = "-inf"\n')
    assert "is a string, not a number; write -inf unquoted" in p
    assert one_problem("[engine]\nmax_attenuation_db = -inf\n" + ONE).endswith("out of range [0, 60] dB")


# --------------------------------------------------------------------------
# chains


VOICE = """\
name = "voice"
[[stage]]
name = "hp"
type = "highpass"
cutoff_frequency_hz = 90
"""

BAD = """\
[[stage]]
name = "hp"
type = "highpas"
[[stage]]
name = "lvl"
type = "gain"
gain_db = 50
"""


@pytest.fixture
def confdir(tmp_path):
    d = tmp_path / "etc"
    (d / "chains").mkdir(parents=True)
    (d / "chains" / "voice.toml").write_text(VOICE)
    (d / "chains" / "bad.toml").write_text(BAD)
    return d


def test_relative_chain_path_is_relative_to_the_config_file(confdir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the config's folder
    f = confdir / "quietcast.toml"
    f.write_text(ONE + 'chain = "chains/voice.toml"\n[[channel]]\nname = "guest"\nchain = "./chains/../chains/voice.toml"\n')
    c = load_config(f)
    want = str(confdir / "chains" / "voice.toml")
    assert c.channel("host").chain == want and c.channel("guest").chain == want
    assert isinstance(c.channel("host").chain_spec, Chain)
    assert [s.name for s in c.channel("host").chain_spec.stages] == ["hp"]
    assert c.to_dict()["channel"][0]["chain"] == want
    # the effective config works from anywhere
    monkeypatch.chdir(confdir / "chains")
    assert parse_config(dump_toml(c)) == c


def test_relative_chain_path_with_base_dir_and_cwd(confdir, monkeypatch):
    text = ONE + 'chain = "chains/voice.toml"\n'
    assert cfg(text, base_dir=str(confdir)).channels[0].chain == str(confdir / "chains" / "voice.toml")
    monkeypatch.chdir(confdir)
    assert cfg(text).channels[0].chain == str(confdir / "chains" / "voice.toml")


def test_absolute_and_home_chain_paths(confdir, monkeypatch):
    p = str(confdir / "chains" / "voice.toml")
    assert cfg(ONE + f"chain = {json.dumps(p)}\n").channels[0].chain == p
    monkeypatch.setenv("HOME", str(confdir))
    assert cfg(ONE + 'chain = "~/chains/voice.toml"\n').channels[0].chain == p


def test_bundled_chain_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dry").write_text("not a chain")  # a bare name never means a file
    c = cfg(ONE + 'chain = "dry"\n')
    assert c.channels[0].chain == "dry" and c.channels[0].chain_spec.stages == []
    assert parse_config(dump_toml(c)) == c
    p = one_problem(ONE + 'chain = "dyr"\n')
    assert p.startswith("[channel 'host'] chain: no bundled chain 'dyr' (did you mean 'dry'?); bundled: default, dry")


def test_chain_file_with_errors_is_reported_under_the_channel(confdir):
    f = confdir / "quietcast.toml"
    f.write_text(ONE + '[[channel]]\nname = "guest"\nchain = "chains/bad.toml"\nstrength = 7\n')
    with pytest.raises(ConfigError) as ei:
        load_config(f)
    ps = [str(p) for p in ei.value.problems]
    bad = str(confdir / "chains" / "bad.toml")
    assert len(ps) == 3, ps
    assert ps[0].startswith("[channel 'guest'] strength: value 7 is out of range")
    assert ps[1].startswith(f"[channel 'guest'] chain: {bad}: stage 'hp': ") and "'highpass'" in ps[1]
    assert ps[2].startswith(f"[channel 'guest'] chain: {bad}: stage 'lvl': ") and "out of range" in ps[2]


def test_missing_chain_file(confdir):
    p = one_problem(ONE + 'chain = "chains/nope.toml"\n', base_dir=str(confdir))
    assert p == f"[channel 'host'] chain: {confdir / 'chains' / 'nope.toml'}: cannot read chain file: No such file or directory"


# --------------------------------------------------------------------------
# effective config and TOML round trip


def test_round_trip_default():
    c = load_config(DEFAULT_CONFIG_PATH)
    text = dump_toml(c)
    assert parse_config(text) == c
    assert dump_toml(parse_config(text)) == text
    assert tomllib.loads(text) == c.to_dict()


def test_round_trip_everything(confdir):
    c = cfg(f"""
        [jack]
        client_name = "studio \\"B\\" \\\\ ü"
        server = "live"
        reconnect_interval_ms = 50
        [engine]
        model = "dsp"
        max_attenuation_db = 0.1
        safety_ms = 0
        max_backlog_ms = 20
        threads = 64
        [[channel]]
        name = "host"
        chain = "chains/voice.toml"
        strength = 0.3333333333333333
        input_gain_db = -60
        output_gain_db = -inf
        background_db = -95.5
        bypass = true
        mute = true
        stems = true
        connect_in = ["system:capture_1", "player:out_*", "a b:c\\"d\\u00e9"]
        connect_out = []
        [[channel]]
        name = "g2"
        chain = "dry"
    """, base_dir=str(confdir))
    d = c.to_dict()
    assert d["channel"][0]["chain"] == str(confdir / "chains" / "voice.toml")
    assert d["channel"][0]["connect_in"] == ["system:capture_1", "player:out_*", 'a b:c"dé']
    assert d["jack"]["client_name"] == 'studio "B" \\ ü'
    again = parse_config(dump_toml(c))
    assert again == c
    assert again.channels[0].strength == 0.3333333333333333


def test_to_dict_lists_every_key():
    """Every key, except those left to the model (max_attenuation_db,
    pitch_filter, pause_db, pause_threshold) or, in a channel, to the
    engine (pause_db, pause_threshold) that the file does not set."""
    d = cfg(ONE).to_dict()
    schema = describe_schema()
    assert list(d) == ["jack", "engine", "control", "midi", "state", "channel"]
    for section in ("jack", "engine", "control", "midi", "state"):
        assert list(d[section]) == [k["name"] for k in schema[section] if k["name"] not in (
            "max_attenuation_db", "pitch_filter", "pause_db", "pause_threshold")]
    d = cfg("[engine]\nmax_attenuation_db = 12\npitch_filter = 0.25\npause_db = 12\npause_threshold = 0.2\n"
            + ONE).to_dict()
    assert list(d["engine"]) == [k["name"] for k in schema["engine"]]
    assert list(d["channel"][0]) == [k["name"] for k in schema["channel"]
                                     if k["name"] not in ("pause_db", "pause_threshold")]
    d = cfg(ONE.replace("[[channel]]", "[[channel]]\npause_db = 20\npause_threshold = 0.4")).to_dict()
    assert list(d["channel"][0]) == [k["name"] for k in schema["channel"]]
    assert d["channel"][0]["pause_db"] == 20.0 and d["channel"][0]["pause_threshold"] == 0.4


def test_to_toml_writer():
    doc = {
        "title": "x",
        "n": 3, "f": 1e20, "g": 1.5e-7, "neg": -math.inf, "pos": math.inf, "yes": True, "no": False,
        "s": 'quote " back \\ nl \n tab \t bell \x07 del \x7f é',
        "empty": [], "nums": [1, 2.5], "nested_list": [[1, 2], ["a"]],
        "inline": [{"a": 1}, 2],
        "odd key": 1, "": 2,
        "t": {"a": 1, "sub": {"b": [True]}, "arr": [{"x": 1}, {"x": 2, "deep": {"y": "z"}}]},
        "aot": [{"k": "v"}],
    }
    text = to_toml(doc)
    back = tomllib.loads(text)
    nan = tomllib.loads(to_toml({"x": math.nan}))["x"]
    assert math.isnan(nan)
    assert back == doc
    with pytest.raises(TypeError):
        to_toml({"x": None})


def test_dump_toml_header():
    text = dump_toml(cfg(ONE), header="line one\nline two")
    assert text.startswith("# line one\n# line two\n\n[jack]\n")
    assert parse_config(text) == cfg(ONE)


# --------------------------------------------------------------------------
# schema and CLI helpers


def test_describe_schema():
    s = describe_schema()
    assert list(s) == ["jack", "engine", "control", "midi", "state", "channel"]
    keys = {k["name"]: k for k in s["channel"]}
    assert keys["name"]["required"] is True
    assert keys["strength"]["min"] == 0.0 and keys["strength"]["max"] == 1.0 and keys["strength"]["default"] == 1.0
    assert keys["background_db"]["default"] == -math.inf and keys["background_db"]["allow_neg_inf"] is True
    assert keys["background_db"]["range"] == "[-96, 0] or -inf dB"
    assert keys["connect_in"]["type"] == "list[str]" and keys["connect_in"]["default"] == []
    eng = {k["name"]: k for k in s["engine"]}
    assert "dsp" in eng["model"]["rule"] and "bundle folder" in eng["model"]["rule"]
    assert eng["model"]["default"] == "default"
    assert {k["name"] for k in s["jack"]} == {"client_name", "server", "reconnect_interval_ms", "pipewire_quantum"}


def test_the_pipewire_quantum_is_zero_or_32_to_8192_and_an_explicit_pipewire_latency_wins():
    """``[jack] pipewire_quantum``: the period the daemon asks of PipeWire's
    graph (PIPEWIRE_LATENCY); 0 asks for none; 1..31 and above 8192 are
    refused with the allowed values named."""
    base = '[[channel]]\nname = "a"\n'
    assert parse_config(base).jack.pipewire_quantum == 256
    assert parse_config(base).jack.pipewire_latency({}) == "256/48000"
    assert parse_config("[jack]\npipewire_quantum = 0\n" + base).jack.pipewire_latency({}) is None
    assert parse_config("[jack]\npipewire_quantum = 64\n" + base).jack.pipewire_latency(
        {"PIPEWIRE_LATENCY": "512/48000"}) == "512/48000"
    for bad, words in ((16, "0 (none), or 32..8192"), (9000, "8192")):
        with pytest.raises(ConfigError) as e:
            parse_config(f"[jack]\npipewire_quantum = {bad}\n" + base)
        assert "[jack] pipewire_quantum" in str(e.value) and words in str(e.value), str(e.value)


def test_cmd_config_schema():
    text = cmd_config_schema()
    assert "[jack]" in text and "[[channel]]" in text and "background_db" in text and "[-96, 0] or -inf dB" in text
    doc = json.loads(cmd_config_schema(as_json=True))  # strict JSON: -inf written as a string
    assert {k["name"]: k["default"] for k in doc["channel"]}["background_db"] == "-inf"


def test_cmd_config_check(tmp_path, confdir):
    ok, text = cmd_config_check(DEFAULT_CONFIG_PATH)
    assert ok and text.startswith(f"{DEFAULT_CONFIG_PATH}: OK: 2 channels (host, guest)")
    f = tmp_path / "bad.toml"
    f.write_text(ONE + "strenght = 1\nmute = 0\n")
    ok, text = cmd_config_check(f)
    assert not ok
    assert text.startswith(f"{f}: 2 problems\n  - [channel 'host'] strenght: unknown key (did you mean 'strength'?)\n")


def test_cmd_config_check_builds_chains(confdir):
    """A chain can be valid on paper but fail to build (an impulse response
    that is not audio); `config check` builds each chain once to find that."""
    (confdir / "chains" / "ir.wav").write_bytes(b"not audio" * 100)
    (confdir / "chains" / "room.toml").write_text(
        '[[stage]]\nname = "room"\ntype = "convolution"\nimpulse_response_filename = "ir.wav"\n')
    f = confdir / "quietcast.toml"
    f.write_text(ONE + 'chain = "chains/room.toml"\n')
    assert load_config(f).channels[0].chain.endswith("room.toml")  # loading does not build
    ok, text = cmd_config_check(f)
    assert not ok
    assert f"[channel 'host'] chain: {confdir / 'chains' / 'room.toml'}: stage 'room': " in text
    assert cmd_config_check(f, build_chains=False)[0]


@pytest.mark.parametrize("endpoint,ok", [
    ("tcp://127.0.0.1:5555", True), ("tcp://[::1]:1", True), ("tcp://localhost:65535", True), ("ipc:///tmp/x", True),
    ("tcp://127.0.0.1:99999", False), ("tcp://127.0.0.1:0", False), ("tcp://127.0.0.1:65536", False),
    ("tcp://127.0.0.1", False), ("tcp://127.0.0.1:", False), ("tcp://127.0.0.1:*", False), ("tcp://:5555", False),
])
def test_a_tcp_endpoint_needs_a_port_1_to_65535(endpoint, ok):
    """ZeroMQ takes tcp://127.0.0.1:99999 and listens on port 34463
    (99999 - 65536): the daemon then says it serves on 99999."""
    for key in ("bind", "events"):
        text = f'[control]\n{key} = "{endpoint}"\n' + ONE
        if ok:
            assert getattr(cfg(text).control, key) == endpoint
        else:
            p = one_problem(text)
            assert p.startswith(f"[control] {key}: value {endpoint!r} ") and ("1..65535" in p or "has no port" in p), p


def _check(path, text: str):
    path.write_text(text)
    return cmd_config_check(path)


def test_config_check_runs_what_run_checks_before_it_starts(tmp_path):
    """`config check` said OK for configs `quietcast run` refuses (or runs
    without MIDI): the control endpoints and key files, a pause gate the
    model lacks, the MIDI mapping file. No JACK server is needed."""
    f = tmp_path / "q.toml"
    ok, text = _check(f, '[engine]\nmodel = "dsp"\n' + ONE + "pause_db = 10\n")
    assert not ok and text == (f"{f}: 1 problem\n  - [channel 'host'] pause_db: model 'dsp' has no pause gate "
                               "(the shipped neural models do)")
    # an engine-level setting is named as written ([engine] pause_db), not as the suppressor stage's "nr.pause_db"
    for key, value in (("pause_db", 10), ("pause_threshold", 0.5), ("pitch_filter", 0.5)):
        ok, text = _check(f, f'[engine]\nmodel = "dsp"\n{key} = {value}\n' + ONE)
        assert not ok and text.startswith(f"{f}: 1 problem\n  - [engine] {key}: model 'dsp' has no "), text
        assert "nr." not in text
    ok, text = _check(f, '[control]\nbind = "tcp://0.0.0.0:5555"\n' + ONE)
    assert not ok and text.startswith(f"{f}: 1 problem\n  - [control] bind: 'tcp://0.0.0.0:5555' is not a loopback "
                                      "or ipc endpoint: that needs CURVE keys"), text
    ok, text = _check(f, '[control]\nbind = "tcp://0.0.0.0:5555"\ncurve_secret_key = "nokey"\n' + ONE)
    assert not ok and text == (f"{f}: 2 problems\n  - [control] curve_secret_key: {str(tmp_path / 'nokey')!r} does not "
                               "exist\n  - [control] curve_clients: '' must be a folder of client public keys")
    (tmp_path / "pub.key").write_text("metadata\ncurve\n    public-key = \"" + "a" * 40 + '"\n')
    (tmp_path / "clients").mkdir()
    ok, text = _check(f, '[control]\ncurve_secret_key = "pub.key"\ncurve_clients = "clients"\n' + ONE)
    assert not ok and "[control] curve_secret_key: " in text and "is not a secret key file" in text, text
    # the control checks are skipped with the control socket off, as `run` skips them
    assert _check(f, '[control]\nenabled = false\nbind = "tcp://0.0.0.0:5555"\n' + ONE)[0]
    # the MIDI mapping, checked against the engine's parameters as the daemon checks it
    (tmp_path / "map.toml").write_text('[[map]]\naddress = "host.strenght"\nnumber = 7\n'
                                       '[[map]]\naddress = "host.pause_db"\nnumber = 8\n')
    ok, text = _check(f, '[engine]\nmodel = "dsp"\n[midi]\nmapping = "map.toml"\n' + ONE)
    where = f"[midi] mapping: {tmp_path / 'map.toml'}: [[map]]"
    assert not ok and text.startswith(f"{f}: 2 problems\n  - {where} 1 (host.strenght) address: unknown parameter "
                                      "(did you mean 'strength'?)"), text
    assert f"  - {where} 2 (host.pause_db) address: model 'dsp' has no pause gate" in text
    assert _check(f, '[engine]\nmodel = "dsp"\n[midi]\nenabled = false\nmapping = "map.toml"\n' + ONE)[0]
    # without building, the mapping file is still read (its syntax)
    (tmp_path / "map.toml").write_text('[[map]]\nadress = "host.strength"\n')
    f.write_text('[engine]\nmodel = "dsp"\n[midi]\nmapping = "map.toml"\n' + ONE)
    ok, text = cmd_config_check(f, build_chains=False)
    assert not ok and "adress: unknown key (did you mean 'address'?)" in text
    # the default mapping file is midi.toml beside the state file
    (tmp_path / "midi.toml").write_text('[[map]]\naddress = "guest.strength"\nnumber = 7\n')
    ok, text = _check(f, '[engine]\nmodel = "dsp"\n[state]\nfile = "state.json"\n' + ONE)
    assert not ok and f"[midi] mapping: {tmp_path / 'midi.toml'}: [[map]] 1 (guest.strength) address: no channel" in text
    ok, text = _check(f, '[engine]\nmodel = "dsp"\n' + ONE + '[[channel]]\nname = "guest"\n'
                      '[state]\nfile = "state.json"\n')
    assert ok, text


def test_config_check_reads_the_daemons_key_file_as_a_client_reads_its_own(tmp_path):
    """The daemon's secret key file was checked apart from the clients'
    (quietcast.daemon.client.load_key): a folder was said not to exist, and
    a malformed key passed the check (the control socket's start failed on
    it). Now one reader checks both, and says what is wrong."""
    import zmq.auth

    f = tmp_path / "q.toml"
    pub, sec = zmq.auth.create_certificates(str(tmp_path), "d")
    (tmp_path / "clients").mkdir()
    (tmp_path / "bad.key_secret").write_text((tmp_path / "d.key_secret").read_text().replace('secret-key = "', 'secret-key = "~'))
    for key, want in ((sec, None), (tmp_path / "clients", "is a folder, not a key file"),
                      (tmp_path / "bad.key_secret", "holds a malformed key (a CURVE key is 40 Z85 characters)"),
                      (pub, "is not a secret key file (use the .key_secret file)")):
        ok, text = _check(f, f'[control]\ncurve_secret_key = "{key}"\ncurve_clients = "clients"\n' + ONE)
        assert (ok, text if not ok else None) == (want is None, want and f"{f}: 1 problem\n  - [control] "
                                                                           f"curve_secret_key: {str(key)!r}: {want}")


def test_run_refuses_what_config_check_refuses_without_a_jack_server(tmp_path):
    """`quietcast run` stopped at a pause gate the model lacks only once the
    JACK server answered (it waited for one until then)."""
    import subprocess
    import sys

    f = tmp_path / "q.toml"
    f.write_text('[jack]\nserver = "no_such_server_qc"\n[engine]\nmodel = "dsp"\npause_db = 10\n'
                 f'[control]\nbind = "ipc://{tmp_path}/ctl"\nevents = "ipc://{tmp_path}/ev"\n[state]\nenabled = false\n'
                 + ONE)
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    r = subprocess.run([sys.executable, "-m", "quietcast.daemon", "run", "-c", str(f)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"quietcast: error: {f}: 1 problem\n  - [engine] pause_db: model 'dsp' has no pause head "
                        "(the shipped neural models do)\n")
    assert cmd_config_check(f) == (False, r.stderr.removeprefix("quietcast: error: ").rstrip("\n"))


def test_a_convolution_chain_checks_from_any_folder(confdir, tmp_path, monkeypatch):
    """The impulse response is relative to the chain file, not to the folder
    `config check` runs in ("RuntimeError: Unable to load impulse response:
    ir.wav"); a missing one is a chain problem naming the file."""
    from pedalboard.io import AudioFile

    with AudioFile(str(confdir / "chains" / "ir.wav"), "w", 48_000, 1) as f:
        f.write(np.ones((1, 64), np.float32) * 0.1)
    (confdir / "chains" / "room.toml").write_text(
        '[[stage]]\nname = "room"\ntype = "convolution"\nimpulse_response_filename = "ir.wav"\n')
    f = confdir / "quietcast.toml"
    f.write_text('[engine]\nmodel = "dsp"\n' + ONE + 'chain = "chains/room.toml"\n')
    monkeypatch.chdir(tmp_path)
    ok, text = cmd_config_check(f)
    assert ok, text
    (confdir / "chains" / "ir.wav").unlink()
    ok, text = cmd_config_check(f)
    assert not ok and text == (f"{f}: 1 problem\n  - [channel 'host'] chain: {confdir / 'chains' / 'room.toml'}: "
                               f"stage 'room': impulse response {str(confdir / 'chains' / 'ir.wav')!r} does not exist")


def test_cmd_config_show(tmp_path):
    shown = cmd_config_show(None)
    assert shown.startswith("# quietcast effective config from the shipped default")
    assert parse_config(shown) == load_config(DEFAULT_CONFIG_PATH)
    f = tmp_path / "q.toml"
    f.write_text(ONE)
    shown = cmd_config_show(f)
    assert f"from {f}" in shown
    assert "reconnect_interval_ms = 500" in shown and "background_db = -inf" in shown
    # every key: those left to the model or the engine are comments with the value they get (they were left out)
    from quietcast.models import create_suppressor

    own = create_suppressor("default", 1).PARAMS
    for key, name in (("max_attenuation_db", "strength_db"), ("pitch_filter", "pitch_filter"),
                      ("pause_db", "pause_db"), ("pause_threshold", "pause_threshold")):
        assert f"# {key} = {float(own[name][2])!r}".ljust(34) + "# not set: the model's own\n" in shown, key
    assert shown.endswith(f"# pause_threshold = {float(own['pause_threshold'][2])!r}".ljust(34)
                          + "# not set: the engine's (the model's own)\n")
    assert parse_config(shown) == load_config(f)
    f.write_text("[engine]\nmax_attenuation_db = 12\npause_db = 20\n" + ONE + "pause_threshold = 0.5\n")
    shown = cmd_config_show(f)
    assert "\nmax_attenuation_db = 12.0\n" in shown and "# max_attenuation_db" not in shown
    assert "\npause_threshold = 0.5\n" in shown and "# pause_db = 20.0 " in shown and "(engine.pause_db)" in shown
    assert parse_config(shown) == load_config(f)
    f.write_text('[engine]\nmodel = "dsp"\n' + ONE)
    shown = cmd_config_show(f)
    assert "# pause_db: not set (model 'dsp' has no pause gate)\n" in shown
    assert "# pitch_filter: not set (model 'dsp' has no pitch filter)\n" in shown
    assert "# max_attenuation_db = 15.0 " in shown and shown.endswith("connect_out = []\n")
    f.write_text(ONE + "strength = 2\n")
    with pytest.raises(ConfigError, match="out of range"):
        cmd_config_show(f)
