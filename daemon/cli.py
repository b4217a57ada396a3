"""The ``quietcast`` command line.

Subcommands::

    quietcast run [-c CONFIG] [--server NAME]    the live JACK daemon
    quietcast config check|show|schema           daemon configs
    quietcast ctl COMMAND ...                    control a running daemon (ZeroMQ)
    quietcast keys generate DIR                  CURVE keys for remote control
    quietcast process CHAIN INPUT... -o OUTPUT   run a chain over files/folders
    quietcast demo [-o DIR]                      clean the bundled noisy clip
    quietcast chain check FILE                   validate a chain file
    quietcast chain show CHAIN                   the chain, its stages and latency
    quietcast chain types [TYPE]                 stage types and their parameters
    quietcast models                             suppressors available here

User mistakes end in one clear line on stderr (``quietcast: error: ...``)
and a non-zero exit status, never a traceback: 2 for a bad command line,
chain or input; 1 when some files failed to process, or when a file or
folder could not be used (the path and the system's reason).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK = 0
EXIT_FAILED_FILES = 1
EXIT_USAGE = 2


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


def _chain(what: str):
    from quietcast.bridge import Chain

    return Chain.load(what)


# --------------------------------------------------------------------------
# process


def cmd_process(args) -> int:
    from quietcast.bridge.offline import READ_EXTS, Progress, plan_jobs, process_files, split_existing, total_duration

    if args.ray is not None:
        from quietcast.bridge.cluster import require_ray

        require_ray()  # without the extra: one line saying how to install it, exit 2
        if args.ray != "local" and (os.path.exists(args.ray) or args.ray.lower().endswith(READ_EXTS)
                                    or any(c in args.ray for c in "*?[")):
            args.inputs.append(args.ray)  # `... a.wav --ray b.wav`: b.wav is an input, Ray is local
            args.ray = "local"
    chain = _chain(args.chain)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs} is out of range: give 1 or more")
    if args.sample_rate is not None and not (8000 <= args.sample_rate <= 192_000):
        raise UserError(f"--sample-rate {args.sample_rate} is out of range [8000, 192000] Hz")
    if args.split_seconds < 0 or args.gpus_per_task <= 0:
        raise UserError("--split-seconds must be >= 0 and --gpus-per-task > 0")
    try:
        jobs = plan_jobs(args.inputs, args.output, args.format)
    except Exception as e:
        raise UserError(str(e)) from None
    # build once up front so a broken plugin or parameter is reported before any file
    chain.check(args.sample_rate or 48_000, args.channels or 1)
    # one thread per process: files run in parallel (--jobs, --ray), and
    # torch's own thread pool made a neural chain ~9x slower on 2 cores
    _set_threads(1)
    progress = None
    if not args.quiet:
        todo = split_existing(jobs)[0] if args.skip_existing else jobs
        progress = Progress(total_duration(todo) if len(todo) <= 2000 else 0.0, force=args.progress)
    if args.ray is not None:
        import contextlib

        from quietcast.bridge.cluster import process_files_ray

        # Ray's driver prints a dead worker's notice on stdout: the JSON summary must stay alone there
        with contextlib.redirect_stdout(sys.stderr):
            summary = process_files_ray(
                chain, jobs, address=None if args.ray == "local" else args.ray, num_cpus=args.jobs,
                overwrite=args.overwrite, sample_rate=args.sample_rate, channels=args.channels, progress=progress,
                split_seconds=args.split_seconds, gpus_per_task=args.gpus_per_task, skip_existing=args.skip_existing,
            )
    else:
        summary = process_files(
            chain, jobs, workers=args.jobs or 1, overwrite=args.overwrite,
            sample_rate=args.sample_rate, channels=args.channels, progress=progress, skip_existing=args.skip_existing,
        )
    from quietcast.bridge.offline import INTERRUPTED, NOT_STARTED

    if any(r.error in (INTERRUPTED, NOT_STARTED) for r in summary.failed):
        # a SIGINT stopped the workers (their own handler) but not this process (one started in the
        # background by a non-interactive shell ignores SIGINT): the batch was interrupted all the same
        raise KeyboardInterrupt
    if args.json:
        print(json.dumps({
            "files": [r.__dict__ for r in summary.results],
            "failed": len(summary.failed),
            "skipped": len(summary.skipped),
            "audio_seconds": summary.audio_seconds,
            "elapsed": summary.elapsed,
        }, indent=2))
    if not args.quiet or summary.failed:
        print(summary.text(), file=sys.stderr)
    return EXIT_FAILED_FILES if summary.failed else EXIT_OK


# --------------------------------------------------------------------------
# chain


def cmd_chain_check(args) -> int:
    chain = _chain(args.chain)
    chain.check(args.sample_rate, args.channels)
    print(f"{args.chain}: OK ({len(chain.stages)} stage(s))")
    return EXIT_OK


def cmd_chain_show(args) -> int:
    chain = _chain(args.chain)
    proc = chain.processor(args.sample_rate, args.channels)
    doc = {
        "name": chain.name,
        "source": chain.source,
        "sample_rate": proc.sample_rate,
        "channels": proc.channels,
        "latency_samples": proc.latency,
        "latency_ms": round(1000.0 * proc.latency / proc.sample_rate, 3),
        "stages": [
            {"name": s.name, "type": s.type_name if s.type_name not in ("pedalboard",) else spec.type,
             "latency_samples": s.latency, "bypass": s.bypass, "params": {p["name"]: p["value"] for p in s.describe_params()}}
            for s, spec in zip(proc.stages, chain.stages)
        ],
    }
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return EXIT_OK
    print(f"chain {doc['name']!r} from {doc['source']}: {len(doc['stages'])} stage(s), "
          f"latency {proc.latency} samples = {doc['latency_ms']} ms at {proc.sample_rate} Hz, {proc.channels} ch")
    for st in doc["stages"]:
        params = ", ".join(f"{k}={v}" for k, v in st["params"].items() if k != "params")
        print(f"  {st['name']:<12} {st['type']:<16} {st['latency_samples']:>6} smp  {'[bypass] ' if st['bypass'] else ''}{params}")
    return EXIT_OK


def cmd_chain_types(args) -> int:
    from quietcast.bridge.stages import all_types, params_of, resolve_type

    names = all_types()
    if args.type:
        t, prob = resolve_type(args.type)
        if prob:
            raise UserError(prob.message)
        names = [t]
    out = {}
    for t in names:
        out[t] = [p.describe() for p in params_of(t)]
    if args.json:
        print(json.dumps(out, indent=2, default=str))
        return EXIT_OK
    for t, params in out.items():
        print(t)
        for p in params:
            rng = ""
            if p["type"] in ("float", "int"):
                rng = f"[{p['min']}, {p['max']}] {p['unit']}".rstrip()
            elif p["type"] == "choice":
                rng = "one of " + ", ".join(p["choices"])
            print(f"  {p['name']:<28} {p['type']:<6} default={p['default']!s:<10} {rng}")
    return EXIT_OK


def cmd_models(args) -> int:
    from quietcast.models import (available_models, bundle_licence, create_suppressor, default_fallback_reason,
                                  resolve_model)

    rows = []
    for name in available_models():
        row = {"name": name, "is": resolve_model(name),
               # why "default" is dsp here (the shipped bundle damaged or missing, no torch), else None
               "fallback_reason": default_fallback_reason() if name == "default" else None,
               "unavailable": None}
        try:
            sup = create_suppressor(name, 1)
        except (ValueError, OSError, ImportError, RuntimeError) as e:  # a broken bundle: listed, with why
            row["unavailable"] = str(e) or type(e).__name__
            rows.append(row)
            continue
        bundle = getattr(sup, "bundle", None)
        lic = bundle_licence(sup)
        row.update({"sample_rate": sup.sample_rate,
                    "latency_samples": sup.latency, "latency_ms": 1000.0 * sup.latency / sup.sample_rate,
                    # what engine.max_attenuation_db and a chain's denoise stage use when left out
                    "default_strength_db": sup.PARAMS["strength_db"][2] if "strength_db" in sup.PARAMS else None,
                    # engine.pitch_filter and a denoise stage's, when left out (neural models)
                    "default_pitch_filter": sup.PARAMS["pitch_filter"][2] if "pitch_filter" in sup.PARAMS else None,
                    # engine.pause_db and a denoise stage's, when left out (bundles with a pause head)
                    "default_pause_db": sup.PARAMS["pause_db"][2] if "pause_db" in sup.PARAMS else None,
                    "default_pause_threshold": (sup.PARAMS["pause_threshold"][2] if "pause_threshold" in sup.PARAMS
                                                else None),
                    "bundle": str(bundle.path) if bundle is not None else None,
                    "commercial_use": None if lic is None else lic["commercial_use"],
                    "copyleft": [] if lic is None else lic.get("copyleft", []),
                    "licence_note": None if lic is None else lic.get("note")})
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            alias = f" (= {r['is']})" if r["is"] != r["name"] else ""
            if r["fallback_reason"]:
                alias = f" (= {r['is']}: {r['fallback_reason']})"
            if r["unavailable"]:
                print(f"{r['name']:<13}{alias:<10} unavailable: {r['unavailable']}")
                continue
            lic = ""
            if r["commercial_use"] is not None:
                lic = "; weights: " + ("commercial use allowed" if r["commercial_use"] else "NON-COMMERCIAL only")
                lic += " (GPL training data)" if r["copyleft"] else ""
            strength = f", strength {r['default_strength_db']:g} dB" if r["default_strength_db"] else ""
            if r["default_pitch_filter"] is not None:
                strength += f", pitch filter {r['default_pitch_filter']:g}"
            if r["default_pause_db"]:
                strength += f", pause gate {r['default_pause_db']:g} dB below {r['default_pause_threshold']:g}"
            elif r["default_pause_db"] is not None:
                strength += ", pause gate off"
            print(f"{r['name']:<13}{alias:<10} {r['sample_rate']} Hz, latency {r['latency_samples']} samples = "
                  f"{r['latency_ms']:.1f} ms{strength}{lic}")
    return EXIT_OK


# --------------------------------------------------------------------------
# run, config


def cmd_run(args) -> int:
    from .config import DEFAULT_CONFIG_PATH, ConfigError, load_config
    from .service import Daemon, setup_logging

    path = args.config or DEFAULT_CONFIG_PATH
    cfg = load_config(path)  # every problem at once, nothing started
    # (before the engine is built below: it runs with these threads, and what its build logs is logged)
    setup_logging(args.log_level)
    _set_threads(cfg.engine.threads)
    # what `config check` checks too, before anything starts (and whether JACK runs or not): the control
    # endpoints and keys, each chain and the engine built once (a plugin that will not load, a pause gate
    # the model lacks). A broken MIDI mapping is not among them: the daemon runs, without MIDI control.
    # The engine built for the check, on the configured device, is the one the daemon runs (at 48 kHz).
    from .preflight import startup_check

    engine, problems = startup_check(cfg, midi=False, device=cfg.engine.device)
    if problems:
        raise ConfigError(problems, path)
    d = Daemon(cfg, server=args.server, engine=engine)
    del engine  # (the daemon's to drop: e.g. for a server at another rate)
    d.install_signal_handlers()
    return d.run()


def _set_threads(n: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def cmd_config_check(args) -> int:
    from .config import cmd_config_check as check

    ok, text = check(args.file)
    if ok:
        print(text)
        return EXIT_OK
    print(f"quietcast: error: {text}", file=sys.stderr)
    return EXIT_USAGE


def cmd_config_show(args) -> int:
    from .config import cmd_config_show as show

    print(show(args.file), end="")
    return EXIT_OK


def cmd_config_schema(args) -> int:
    from .config import cmd_config_schema as schema

    print(schema(as_json=args.json))
    return EXIT_OK


# --------------------------------------------------------------------------
# ctl: the shell client


def _ctl_value(text: str):
    t = text.strip()
    low = t.lower()
    if low in ("on", "true", "yes"):
        return True
    if low in ("off", "false", "no"):
        return False
    if low in ("-inf", "inf", "+inf"):
        return low.lstrip("+")
    if low == "null":  # a channel's pause_db / pause_threshold back to the engine's
        return None
    try:
        v = json.loads(t)
        if isinstance(v, (int, float, bool)):
            return v
    except ValueError:
        pass
    return text


def _ctl_print(args, result) -> None:
    from .commands import dumps

    if args.json or not isinstance(result, (dict, list)):
        out = dumps(result).decode()
        print(json.dumps(json.loads(out), indent=2) if args.json else (out.strip('"') if isinstance(result, str) else out))
        return
    if isinstance(result, list) and result and isinstance(result[0], dict) and "address" in result[0]:
        for d in result:
            rng = f"[{d.get('min')}, {d.get('max')}]" if d.get("type") in ("float", "int") else d.get("type")
            print(f"{d['address']:<44} {dumps(d['value']).decode():>10} {d.get('unit') or '':<4} {rng}")
        return
    for k, v in result.items():
        print(f"{k}: {dumps(v).decode() if isinstance(v, (dict, list)) else v}")


def _ctl_client(args):
    """The Client for ``ctl``'s options; a key file or endpoint it cannot
    use is a UserError naming the option, the file and what is wrong."""
    from .client import Client
    from .errors import KeyFileError

    if args.client_key and not args.server_key:
        raise UserError("ctl: --client-key needs --server-key (the daemon's public key file)")
    try:
        return Client(args.endpoint, timeout=args.timeout, curve_server_key=args.server_key,
                      curve_client_key=args.client_key)
    except KeyFileError as e:
        raise UserError(f"ctl --{e.role}-key {e.path}: {e.problem}") from None
    except (OSError, TypeError, ValueError) as e:  # (a key file KeyFileError did not foresee)
        keys = " ".join(f"--{n}-key {p}" for n, p in (("server", args.server_key), ("client", args.client_key)) if p)
        raise UserError(f"ctl {keys}: {e}" if keys else f"ctl: {e}") from None
    except Exception as e:  # zmq.ZMQError: a malformed endpoint
        if type(e).__module__.startswith("zmq"):
            raise UserError(f"ctl: --endpoint {args.endpoint!r}: {e}") from None
        raise


def cmd_ctl(args) -> int:
    from .errors import ControlError

    sub = args.ctl_command
    if not sub:
        return _help(args._ctl_parser)
    if args.endpoint and args.endpoint.startswith("tcp://"):
        from .config import _endpoint_rule

        if why := _endpoint_rule(args.endpoint):  # ZeroMQ would take port 99999 as 34463
            raise UserError(f"ctl: --endpoint {args.endpoint!r} {why}")
    client = _ctl_client(args)
    try:
        with client as c:
            if sub == "watch":
                return _ctl_watch(c, args)
            if sub == "learn":
                return _ctl_learn(c, args)
            if sub == "call":
                try:
                    a = json.loads(args.args) if args.args else {}
                except ValueError as e:
                    raise UserError(f"ctl call: ARGS must be a JSON object: {e}") from None
                if not isinstance(a, dict):
                    raise UserError("ctl call: ARGS must be a JSON object")
                result = c.call(args.cmd, **a)
            elif sub == "set":
                pairs = args.pairs
                if len(pairs) % 2:
                    raise UserError("ctl set: give ADDRESS VALUE pairs")
                vals = {pairs[i]: _ctl_value(pairs[i + 1]) for i in range(0, len(pairs), 2)}
                result = c.call("set", address=pairs[0], value=vals[pairs[0]]) if len(vals) == 1 \
                    else c.call("set", values=vals)
            elif sub == "get":
                result = c.call("get", address=args.addresses[0]) if len(args.addresses) == 1 \
                    else c.call("get", addresses=args.addresses)
            elif sub in ("bypass", "mute"):
                on = None if args.state in (None, "toggle") else args.state == "on"
                result = c.call(sub, channel=args.channel, on=on)
            elif sub == "list":
                result = c.call("list", prefix=args.prefix) if args.prefix else c.call("list")
            elif sub == "load-chain":
                chain = args.chain
                if chain and os.path.exists(chain):
                    # the daemon reads the file, in its own working folder ("/" under systemd)
                    chain = os.path.abspath(chain)
                result = c.call("load_chain", channel=args.channel, chain=chain)
            else:
                result = c.call(sub.replace("-", "_"))
    except ControlError as e:
        print(f"quietcast: error: {e.code}: {e.message}", file=sys.stderr)
        for p in (e.details or {}).get("problems", [])[:50]:
            if str(p) not in e.message:  # (a one-problem message already says it)
                print(f"  - {p}", file=sys.stderr)
        return 3 if e.code == "timeout" else 1
    except Exception as e:  # zmq.ZMQError while talking (e.g. on the events endpoint the daemon named)
        if type(e).__module__.startswith("zmq"):
            raise UserError(f"ctl: {client.endpoint}: {e}") from None
        raise
    _ctl_print(args, result)
    return EXIT_OK


def _ctl_learn(c, args) -> int:
    """Arm learn and wait for its end: subscribed before arming (a control
    already moving is learned within milliseconds), and asking ``status``
    whenever the event stream is quiet for a second (an event sent before
    the subscription reached the daemon is not lost)."""
    import time

    with c.subscribe(["event.learn"]) as sub:
        res = c.call("learn", address=args.address, timeout_s=args.wait)
        print(f"armed {res['armed']}: move a control on the MIDI controller (within {res['timeout_s']:g} s)",
              file=sys.stderr)
        lid = res.get("learn_id")

        def ours(doc: dict) -> bool:  # (this learn's end, not an earlier one's of the same address)
            return doc.get("learn_id") == lid if lid is not None else doc.get("address") == args.address

        deadline = time.monotonic() + args.wait + 2
        try:
            while True:
                got = sub.next(min(1.0, max(0.0, deadline - time.monotonic())))
                if got is not None:
                    if ours(got[1]):
                        return _learn_end(args, got[1])
                    continue
                st = (c.status().get("midi") or {}).get("learn") or {}
                if ours(st) and st.get("state") not in (None, "armed"):
                    end = {"learned": st.get("binding") or {}, "timeout": {"timed_out": True},
                           "cancelled": {"cancelled": True, "note": st.get("note", "")}}.get(st["state"], {})
                    return _learn_end(args, {"address": args.address, **end})
                if time.monotonic() >= deadline:
                    print("quietcast: error: learn: no answer from the daemon's event stream", file=sys.stderr)
                    return 1
        except KeyboardInterrupt:  # Ctrl-C: the learn is disarmed, not left to bind the next control moved
            try:
                c.call("learn", cancel=True)
            except Exception:
                pass
            raise


def _learn_end(args, msg: dict) -> int:
    if msg.get("timed_out"):
        print(f"quietcast: error: learn timed out: nothing moved within {args.wait:g} s", file=sys.stderr)
        return 1
    if msg.get("cancelled"):
        why = msg.get("note") or "cancelled"
        print(f"quietcast: error: learn for {args.address} ended without a binding: {why}", file=sys.stderr)
        return 1
    _ctl_print(args, msg)
    return EXIT_OK


def _ctl_watch(c, args) -> int:
    """Live meters in the terminal (Ctrl-C to stop)."""
    topics = [f"meter.{ch}" for ch in args.channels] if args.channels else ["meter.", "event."]
    shown = 0
    tty = sys.stdout.isatty() and not args.json
    rows: dict = {}

    def bar(db, width=30, floor=-60.0):
        v = 0.0 if db is None else max(0.0, min(1.0, (db - floor) / -floor))
        return "#" * int(v * width) + "." * (width - int(v * width))

    try:
        for topic, msg in c.events(topics, timeout=args.idle):
            if args.json:
                print(json.dumps({"topic": topic, **msg}), flush=True)
                shown += topic.startswith("meter.")
            elif topic.startswith("meter."):
                rows[topic[6:]] = msg
                if tty:
                    sys.stdout.write(f"\x1b[{len(rows)}A" if shown else "")
                for name, m in rows.items():
                    line = (f"{name:<10} in {bar(m['rms_in_db'])} {m['rms_in_db']:6.1f}  out {bar(m['rms_out_db'])} "
                            f"{m['rms_out_db']:6.1f} dBFS  GR {m['gain_reduction_db']:5.1f} dB")
                    print(line + ("\x1b[K" if tty else ""))
                shown += 1
            else:
                print(f"{topic}: {json.dumps(msg)}")
            if args.count and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_keys_generate(args) -> int:
    import zmq.auth

    if not args.name or os.sep in args.name or args.name in (".", ".."):
        raise UserError(f"keys generate: --name {args.name!r} must be a file name stem, not a path")
    folder = os.path.abspath(args.dir)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"keys generate: {folder} exists and is not a folder")
    there = [p for p in (os.path.join(folder, f"{args.name}.key"), os.path.join(folder, f"{args.name}.key_secret"))
             if os.path.lexists(p)]
    if there and not args.force:
        # a new pair would lock out every client that holds the old public key (or the old secret key)
        raise UserError(f"keys generate: {' and '.join(there)} already exist{'s' if len(there) == 1 else ''}; "
                        "every client holding a copy of that key pair would stop working: give --force to replace "
                        "it, or another --name or DIR")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    for p in there:  # (--force) new files: an old one would be rewritten in place, keeping its mode, or followed
        os.unlink(p)  # if a link; the secret key must never sit readable by others, not even for a moment
    old_umask = os.umask(0o077)  # the secret key is never readable by others, not even until the chmod
    try:
        pub, sec = zmq.auth.create_certificates(folder, args.name)
    finally:
        os.umask(old_umask)
    os.chmod(sec, 0o600)
    os.chmod(pub, 0o644)
    print(f"public key: {pub}\nsecret key: {sec}\n"
          f"server: [control] curve_secret_key = {sec!r}; clients: copy {os.path.basename(pub)} into the folder named "
          "by curve_clients (for a client key) or give it to clients as --server-key (for the server key)")
    return EXIT_OK


# --------------------------------------------------------------------------
# demo


def cmd_demo(args) -> int:
    from .demo import format_summary, jackd_running, run_demo, run_live_demo

    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(f"demo: -o {args.output} is a file; give a folder (made if missing) for the demo's five files")
    live = not args.offline
    if live and args.chain:
        raise UserError("--chain applies to the offline demo; add --offline (the live demo runs the daemon's engine)")
    if live:
        import shutil

        if not shutil.which("jackd") and not jackd_running(args.server):
            print("quietcast: jackd is not installed; running the offline demo instead "
                  "(Debian: apt-get install jackd2)", file=sys.stderr)
            live = False
    if live:
        summary = run_live_demo(args.output, server=args.server, model=args.model,
                                progress=lambda m: print(m, file=sys.stderr))
    else:
        chain = _chain(args.chain) if args.chain else None
        summary = run_demo(args.output, chain=chain)
    print(format_summary(summary))
    print(f"\nwrote {os.path.abspath(args.output)}: noisy.wav, cleaned.wav, clean_reference.wav, spectrogram.png, summary.json")
    return EXIT_OK


# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from quietcast.models.common import quietcast_version

    p = argparse.ArgumentParser(
        prog="quietcast",
        description="Background-noise removal for broadcast audio: a live multi-channel JACK daemon "
                    "and the same effect chains over files.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {quietcast_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    pr = sub.add_parser(
        "process", help="run a chain over audio files and folders",
        description="Run CHAIN over audio files, folders (recursive) and glob patterns. Streams in blocks "
                    "(any length), keeps sample rate and channel layout unless told, output is latency aligned. "
                    "Writes a temporary file and renames it into place; never overwrites without --overwrite. "
                    "A file that cannot be read is reported and skipped; the exit status is 1 if any file failed. "
                    "With --ray the files run as Ray tasks (local Ray, or a cluster whose nodes all see the inputs "
                    "and OUTPUT at the same paths); long files are split at digital silence and stitched back "
                    "exactly.",
    )
    pr.add_argument("chain", metavar="CHAIN", help="chain TOML file, or a bundled chain name (default, dry)")
    pr.add_argument("inputs", metavar="INPUT", nargs="+", help="audio files, folders or glob patterns")
    pr.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                    help="output file (one input) or folder (relative paths under input folders, and under a "
                         "pattern's leading folder without wildcards, are kept)")
    pr.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                    help="files processed in parallel (default 1); with --ray and no ADDRESS: CPUs of the local "
                         "Ray instance (default: all cores)")
    ow = pr.add_mutually_exclusive_group()
    ow.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    ow.add_argument("--skip-existing", action="store_true",
                    help="leave existing outputs alone and do the rest (resume an interrupted batch)")
    pr.add_argument("--format", metavar="EXT", help="output format for folder outputs: wav, flac, mp3, ogg, aiff")
    pr.add_argument("--sample-rate", type=int, metavar="HZ", help="resample the output to HZ (default: keep)")
    pr.add_argument("--channels", type=int, choices=(1, 2), help="downmix to 1 or upmix mono to 2 channels")
    pr.add_argument("--progress", action="store_true", help="show progress even when stderr is not a terminal")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress, summary only on failure")
    pr.add_argument("--json", action="store_true", help="print per-file results as JSON on stdout")
    pr.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="run the files as Ray tasks: on a new local Ray instance without ADDRESS, else on the "
                         "cluster at ADDRESS ('auto', HOST:PORT, ray://HOST:10001); put it after the inputs or "
                         "write --ray=ADDRESS. Needs: pip install 'quietcast[cluster]'")
    pr.add_argument("--split-seconds", type=float, default=600.0, metavar="S",
                    help="with --ray: split files longer than S seconds at digital silence into parallel tasks, "
                         "stitched back exactly (default 600; 0: never split)")
    pr.add_argument("--gpus-per-task", type=float, default=1.0, metavar="G",
                    help="with --ray: GPUs each task asks for when the chain has a neural stage and the cluster "
                         "has GPUs (default 1; a fraction shares a GPU)")
    pr.set_defaults(func=cmd_process)

    de = sub.add_parser("demo", help="clean the bundled noisy speech clip, live through JACK, and report",
                        description="Play the bundled noisy speech clip through the live daemon in a JACK graph "
                                    "(a private `jackd -d dummy` is started when no server runs) and record it; "
                                    "or, with --offline, run a chain over it as a file. Writes before/after audio, "
                                    "a spectrogram PNG and a levels/SNR/latency summary.")
    de.add_argument("-o", "--output", default="demo-out", metavar="DIR", help="output folder (default demo-out)")
    de.add_argument("--offline", action="store_true", help="process the clip as a file instead of through JACK")
    de.add_argument("--chain", metavar="CHAIN", help="with --offline: chain file or bundled name (default: default)")
    de.add_argument("--server", metavar="NAME", help="use this running JACK server")
    de.add_argument("--model", default="default", help="suppressor for the live demo (quietcast models)")
    de.set_defaults(func=cmd_demo)

    ch = sub.add_parser("chain", help="check, show and document chains")
    chs = ch.add_subparsers(dest="chain_command", metavar="SUBCOMMAND")
    c1 = chs.add_parser("check", help="validate a chain (every problem at once)")
    c2 = chs.add_parser("show", help="a chain's stages, parameters and latency")
    for c in (c1, c2):
        c.add_argument("chain", metavar="CHAIN", help="chain TOML file or bundled chain name")
        c.add_argument("--sample-rate", type=int, default=48_000, metavar="HZ")
        c.add_argument("--channels", type=int, default=1, metavar="N")
    c1.set_defaults(func=cmd_chain_check)
    c2.add_argument("--json", action="store_true")
    c2.set_defaults(func=cmd_chain_show)
    c3 = chs.add_parser("types", help="stage types and their parameters")
    c3.add_argument("type", nargs="?", metavar="TYPE")
    c3.add_argument("--json", action="store_true")
    c3.set_defaults(func=cmd_chain_types)
    ch.set_defaults(func=lambda a: _help(ch))

    ru = sub.add_parser(
        "run", help="run the live daemon in the JACK graph",
        description="Start the live daemon: one JACK client with an input and output port per configured channel "
                    "(plus voice/background stems), all channels cleaned in one batch at a fixed, declared latency "
                    "(reported on the ports and in the log). Waits for the JACK server and reconnects when it comes "
                    "back. SIGTERM/SIGINT fade out and stop; a second SIGINT exits at once. Refuses to start "
                    "(exit status 2) on the problems `quietcast config check` lists, except a broken MIDI mapping "
                    "file: then it runs without MIDI control (status says why) until the file is fixed and the "
                    "config reloaded (SIGHUP or `quietcast ctl reload`).",
    )
    ru.add_argument("-c", "--config", metavar="FILE", help="daemon config (default: the shipped example, `quietcast config show`)")
    ru.add_argument("--server", metavar="NAME", help="JACK server name (overrides [jack] server)")
    ru.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    ru.set_defaults(func=cmd_run)

    co = sub.add_parser("config", help="check and show daemon configs")
    cos = co.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    k1 = cos.add_parser(
        "check", help="validate a config file (every problem at once)",
        description="Check a daemon config as `quietcast run` does before it starts, without a JACK server: every "
                    "key, each channel's chain (built once), the engine (a pause gate or pitch filter the model "
                    "lacks), the control endpoints and CURVE key files, and the MIDI mapping file. Lists every "
                    "problem at once; exit status 2 if there is any.")
    k1.add_argument("file", metavar="FILE")
    k1.set_defaults(func=cmd_config_check)
    k2 = cos.add_parser("show", help="print the effective config (defaults filled in) as TOML")
    k2.add_argument("file", metavar="FILE", nargs="?", help="config file (default: the shipped example)")
    k2.set_defaults(func=cmd_config_show)
    k3 = cos.add_parser("schema", help="every config key with its type, range and default")
    k3.add_argument("--json", action="store_true")
    k3.set_defaults(func=cmd_config_schema)
    co.set_defaults(func=lambda a: _help(co))

    ct = sub.add_parser("ctl", help="control a running daemon (ZeroMQ)",
                        description="Send commands to a running daemon over its control socket. "
                                    "Exit status: 0 ok, 1 the daemon refused (error code printed), "
                                    "2 usage, 3 no reply (daemon not running?).")
    ct.add_argument("-e", "--endpoint", metavar="ENDPOINT",
                    help="command endpoint, e.g. tcp://HOST:PORT (default: $QUIETCAST_ENDPOINT; else "
                         "ipc://$RUNTIME_DIRECTORY/control where that is set; else the first control socket that "
                         "exists of /run/quietcast/control (the system service), $XDG_RUNTIME_DIR/quietcast/control, "
                         "/tmp/quietcast-UID/control)")
    ct.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for a reply (default 5)")
    ct.add_argument("--json", action="store_true", help="print results as JSON")
    ct.add_argument("--server-key", metavar="FILE", help="CURVE: the daemon's public key file")
    ct.add_argument("--client-key", metavar="FILE", help="CURVE: this client's secret key file")
    cts = ct.add_subparsers(dest="ctl_command", metavar="COMMAND")
    cts.add_parser("status", help="latency, xruns, deadline misses, meters, parameters")
    cts.add_parser("version", help="package and protocol versions")
    x = cts.add_parser("list", help="every parameter address with type, range and value")
    x.add_argument("prefix", nargs="?", metavar="PREFIX", help="e.g. host or host.chain.comp")
    x = cts.add_parser("get", help="current value(s)")
    x.add_argument("addresses", nargs="+", metavar="ADDRESS")
    x = cts.add_parser("set", help="set value(s): ADDRESS VALUE [ADDRESS VALUE ...] (-inf, on/off accepted)")
    x.add_argument("pairs", nargs="+", metavar="ADDRESS VALUE")
    for name in ("bypass", "mute"):
        x = cts.add_parser(name, help=f"{name} a channel (toggle without a state)")
        x.add_argument("channel", metavar="CHANNEL")
        x.add_argument("state", nargs="?", choices=("on", "off", "toggle"))
    x = cts.add_parser("load-chain", help="replace a channel's post-chain (file or bundled name; '' removes)",
                       description="Replace CHANNEL's post-chain with CHAIN: a chain file, which the daemon reads "
                                   "on its own machine (a file that exists here is sent as an absolute path, so a "
                                   "relative one means the same to the daemon as here), or a bundled chain name; "
                                   "'' removes the post-chain.")
    x.add_argument("channel", metavar="CHANNEL")
    x.add_argument("chain", metavar="CHAIN", help="chain TOML file (read by the daemon on its machine), bundled "
                                                  "chain name, or '' for none")
    cts.add_parser("save-state", help="write the state file now")
    cts.add_parser("reload", help="re-read the config file (like SIGHUP)")
    x = cts.add_parser("learn", help="MIDI learn: bind the next moved control to ADDRESS")
    x.add_argument("address", metavar="ADDRESS")
    x.add_argument("--wait", type=float, default=30.0, metavar="S", help="give up after S seconds (default 30)")
    x = cts.add_parser("watch", help="live meters and events in the terminal")
    x.add_argument("channels", nargs="*", metavar="CHANNEL")
    x.add_argument("--count", type=int, default=0, help="stop after N meter updates")
    x.add_argument("--idle", type=float, default=None, metavar="S", help="stop after S seconds without a message")
    x = cts.add_parser("call", help="any command with JSON arguments (for scripts)")
    x.add_argument("cmd", metavar="CMD")
    x.add_argument("args", nargs="?", metavar="JSON", help='e.g. \'{"address": "host.strength"}\'')
    ct.set_defaults(func=cmd_ctl, _ctl_parser=ct)
    p._ctl_parser = ct  # (main: where `ctl set`'s values begin)

    ke = sub.add_parser("keys", help="CURVE key pairs for remote control")
    kes = ke.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    x = kes.add_parser("generate", help="make NAME.key (public) and NAME.key_secret in DIR",
                       description="Make a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret (mode "
                                   "0600). An existing pair is never replaced without --force.")
    x.add_argument("dir", metavar="DIR", help="folder for the two files (made if missing)")
    x.add_argument("--name", default="quietcast", help="file name stem (default quietcast)")
    x.add_argument("--force", action="store_true",
                   help="replace an existing NAME.key / NAME.key_secret (every client's copy of the old pair "
                        "stops working)")
    x.set_defaults(func=cmd_keys_generate)
    ke.set_defaults(func=lambda a: _help(ke))

    mo = sub.add_parser("models", help="suppressors available here, with their latency")
    mo.add_argument("--json", action="store_true")
    mo.set_defaults(func=cmd_models)
    return p


def _help(parser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _ctl_set_values(parser, argv: list[str]) -> list[str]:
    """``ctl set host.background_db -inf``: values such as ``-inf`` are not
    options, so a ``--`` goes right after the ``set`` subcommand (found past
    ctl's own options and their values), unless ``-h``/``--help`` follows
    it (``ctl set --help`` is the subcommand's help) or a ``--`` is there."""
    if not argv or argv[0] != "ctl" or "--" in argv:
        return argv
    ctl = parser._ctl_parser
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if "=" in a or (not a.startswith("--") and len(a) > 2):  # --timeout=1, -eipc://...
            i += 1
            continue
        names = [o for o in ctl._option_string_actions if o == a] or \
                [o for o in ctl._option_string_actions if a.startswith("--") and o.startswith(a)]  # abbreviations
        takes_value = len(names) == 1 and ctl._option_string_actions[names[0]].nargs != 0
        i += 2 if takes_value else 1
    if i < len(argv) and argv[i] == "set" and not {"-h", "--help"} & set(argv[i + 1:]):
        argv = argv[:i + 1] + ["--"] + argv[i + 1:]
    return argv


def main(argv: list[str] | None = None) -> int:
    from quietcast.bridge.errors import BridgeError

    parser = build_parser()
    argv = _ctl_set_values(parser, list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.func(args)
    except (UserError, BridgeError) as e:
        msg = str(e)
        print(f"quietcast: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:  # e.g. an out-of-range model parameter
        print(f"quietcast: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("quietcast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except OSError as e:  # the last resort: a file or folder the command could not use, in one line
        where = "" if e.filename is None else f"{e.filename}" + ("" if e.filename2 is None else f" -> {e.filename2}")
        print(f"quietcast: error: {where + ': ' if where else ''}{e.strerror or e}", file=sys.stderr)
        return EXIT_FAILED_FILES


if __name__ == "__main__":
    sys.exit(main())
