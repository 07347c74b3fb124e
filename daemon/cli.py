"""The ``dnnscale`` command line. Each verb lives in a small function; heavy imports
(torch, onnxruntime) happen inside the verb that needs them, so ``--help`` is instant."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional


class CliError(Exception):
    """One clear line for the user, exit status 2 (or ``code``)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------- train / eval
def _numbers(flag: str, text: str, kind=int) -> list:
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise CliError("%s: expected a number or numbers separated by commas, got %r" % (flag, text))


def _fit_arch(arch, a: argparse.Namespace):
    """The network's input size, channels and classes: the flags where given, else the data's."""
    import dataclasses
    from models import datasets
    from models.cifar import DataError
    try:
        (h, _, c), n = datasets.describe(a.data)
    except DataError as e:
        raise CliError(str(e))
    image, channels, classes = a.image or h, a.channels or c, a.classes or n
    for flag, v, lo in (("--image", image, 8), ("--channels", channels, 1), ("--classes", classes, 2)):
        if v < lo:
            raise CliError("%s must be >= %d, got %d" % (flag, lo, v))
    if channels not in (1, 3):
        raise CliError("--channels must be 1 (grayscale) or 3 (RGB), got %d" % channels)
    return dataclasses.replace(arch, image=image, in_channels=channels, classes=classes)


def train_setup(a: argparse.Namespace):
    """(config, trainer class, exporter) for the parsed ``dnnscale train`` arguments."""
    import dataclasses
    from models import export, train as tr
    from models.arch import Arch, TINY
    if not a.width > 0:
        raise CliError("--width must be > 0, got %s" % a.width)
    arch = (TINY if a.size == "tiny" else Arch()).scaled(a.width)
    if a.group_widths:
        if a.kind == "portfolio":
            raise CliError("--group-widths: a portfolio is one dense network, it has no groups")
        mults = _numbers("--group-widths", a.group_widths, float)
        if len(mults) != a.groups or min(mults) <= 0:
            raise CliError("--group-widths needs %d numbers > 0 (one per group), got %s" % (a.groups, a.group_widths))
        arch = dataclasses.replace(arch, group_widths=tuple(mults))
    arch = _fit_arch(arch, a)
    epochs = _numbers("--epochs", a.epochs)
    common = dict(epochs=epochs, seed=a.seed, batch=a.batch, lr=a.lr, val=a.val, arch=arch)   # [N] is recorded as N
    if a.kind == "portfolio":
        from models.portfolio import PortfolioConfig, PortfolioTrainer
        if len(epochs) > 1:
            raise CliError("--epochs: a portfolio trains one dense network, give one number (got %s)" % a.epochs)
        cfg = PortfolioConfig(levels=a.levels, level_epochs=a.level_epochs, rewind_epoch=a.rewind_epoch,
                              rewind=a.rewind, **common)
        return cfg, PortfolioTrainer, export.export_portfolio
    if not 0 <= a.erase <= 1:
        raise CliError("--erase must be a probability between 0 and 1, got %s" % a.erase)
    if a.swa_epochs < 0 or not a.swa_lr > 0:
        raise CliError("--swa-epochs must be >= 0 and --swa-lr > 0, got %s and %s" % (a.swa_epochs, a.swa_lr))
    cfg = tr.TrainConfig(groups=a.groups, ens_weight=a.ens_weight, ens_from=a.ens_from, swa_epochs=a.swa_epochs,
                         swa_lr=a.swa_lr, swa_from=a.swa_from, erase=a.erase, **common)
    return cfg, tr.Trainer, export.export_group_set


def cmd_train(a: argparse.Namespace) -> int:
    try:
        from models import export, train as tr
    except ImportError as e:
        raise CliError("training needs the train extra (%s): pip install torch==2.13.0 && "
                       "pip install 'dnnscale[train]'" % e)
    from models.cifar import DataError
    cfg, trainer_cls, exporter = train_setup(a)
    ckpt = a.checkpoint_dir or os.path.join(a.out, "checkpoints")
    try:
        result = trainer_cls(a.data, ckpt, cfg, resume=a.resume, threads=a.threads, device=a.device).run()
    except (DataError, tr.TrainError) as e:
        raise CliError(str(e))
    manifest = exporter(result, a.out, cfg, name=a.name, command=" ".join(["dnnscale"] + sys.argv[1:]))
    print(export.format_table(manifest))
    print("model set written to %s" % a.out)
    return 0


def cmd_columns(a: argparse.Namespace) -> int:
    from models import manifest as mf, onnxset, zoo
    try:
        model_dir = zoo.resolve(a.model)
        m = mf.read(model_dir)
    except mf.ModelSetError as e:
        raise CliError(str(e))
    if m["kind"] != "group":
        raise CliError("%s is a %s: only a group set has columns" % (model_dir, m["kind"]))
    files = onnxset.add_columns(model_dir, m)
    mf.write(model_dir, m)
    print("wrote %d column, head and anytime step graphs in %s and listed them in its manifest" % (len(files), model_dir))
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from models import evaluate, zoo
    from models.cifar import DataError
    from models.modelset import ModelSetError
    try:
        rows = evaluate.evaluate(zoo.resolve(a.model), a.data, threads=a.threads,
                                 limit=a.limit, latency_runs=a.latency_runs)
    except (DataError, ModelSetError) as e:
        raise CliError(str(e))
    print(evaluate.format_rows(rows))
    return 0


# ---------------------------------------------------------------------------- platform
def format_platform(d) -> str:
    lines = ["platform: %s%s" % (d["platform"], " (SIMULATED)" if d.get("simulated") else "")]
    width = max([6] + [len(n) for n in d["targets"]])
    for name, t in d["targets"].items():
        f = t["freqs_khz"]
        freqs = "%g-%g MHz, %d steps" % (f[0] / 1000, f[-1] / 1000, len(f)) if f else "fixed frequency"
        cpus = "cpus %s" % ",".join(map(str, t["cpus"])) if t["cpus"] else t["kind"]
        if t.get("parts"):
            lines.append("  target %-*s split: its columns at once on %s; frequencies move together"
                         % (width, name, " | ".join("%s (%s)" % (p["name"], "cpus " + ",".join(map(str, p["cpus"]))
                                                                  if p["cpus"] else p["kind"]) for p in t["parts"])))
            continue
        lines.append("  target %-*s %-16s %-28s control: %s" % (width, name, cpus, freqs, t["method"]))
    gpu = d.get("gpu")
    if gpu and "gpu" not in d["targets"]:
        lines.append("  gpu (not an inference target) %g-%g MHz" % (gpu["freqs_khz"][0] / 1000,
                                                                  gpu["freqs_khz"][-1] / 1000))
    lines.append("  power rails: %s" % (", ".join("%s (%s)" % (r["name"], r["kind"]) for r in d["rails"]) or "none"))
    en = d.get("energy", {})
    lines.append("  energy per inference: %s" % ("from " + "+".join(en.get("rails", [])) if en.get("available")
                                                   else en.get("reason") or "not metered"))
    lines.append("  thermal zones: %s" % (", ".join(d["thermal"]) or "none"))
    dv = d.get("dvfs", {})
    lines.append("  dvfs: %s" % ("on" if dv.get("enabled") else "off (%s)" % dv.get("reason")))
    acc = d.get("access")
    if acc:
        can = [t for t, ok in acc["dvfs"].items() if ok]
        lines.append("  as user %s: frequencies of %s; energy %s" % (
            acc["user"], ", ".join(can) or "no target", "readable" if acc["energy"] else "not readable"))
        if acc.get("remedy"):
            lines.append("  to change that: %s" % acc["remedy"])
    for w in d.get("warnings", []):
        lines.append("  warning: %s" % w)
    return "\n".join(lines)


def cmd_platform(a: argparse.Namespace) -> int:
    import json
    import platforms
    try:
        p = platforms.create(a.platform, root=a.sysfs_root, **a.board)
    except (ValueError, platforms.PlatformError) as e:
        raise CliError(str(e))
    d = p.describe()
    temps = p.temperatures()
    d["temperatures_c"] = temps
    print(json.dumps(d, indent=1) if a.json else format_platform(d))
    return 0


# ---------------------------------------------------------------------------- serve
def _setup_logging(level: str) -> None:
    import logging
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def _read_config(a: argparse.Namespace):
    """The configuration as serve/profile see it: the file, then the options given; raises
    ConfigError. Also what a reload calls, so that a reload reads what a start reads."""
    from .config import load
    keys = ("platform", "sysfs_root", "infer_endpoint", "control_endpoint", "state_dir", "threads")
    over = {k: getattr(a, k, None) for k in keys}
    given = getattr(a, "model", None) or []          # --model, repeated: several sets
    if len(given) == 1:
        over["model"] = given[0]
    elif given:
        over["models"] = list(given)
    return load(getattr(a, "config", None), over)


def _load_config(a: argparse.Namespace):
    from .config import ConfigError
    if getattr(a, "system", False):
        os.environ["DNNSCALE_SYSTEM"] = "1"
    try:
        return _read_config(a)
    except ConfigError as e:
        raise CliError(str(e))


def _start_service(service, show_progress: bool):
    """``service.start()`` with a progress bar over the profile; one line on failure. The
    caller's ``finally`` calls ``service.stop()``, which undoes whatever start got to."""
    from models import ModelSetError
    from platforms import PlatformError
    from .config import ConfigError
    from .profiler import Interrupted
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None:
            from tqdm import tqdm
            bar = tqdm(total=total, desc="profiling", file=sys.stderr, disable=not show_progress, leave=False)
        bar.update(1)

    service.progress = progress
    try:
        service.start()
    except (ModelSetError, ConfigError, PlatformError) as e:
        raise CliError(str(e))
    except Interrupted as e:
        raise CliError("%s; the board's settings are restored" % e, code=130)
    finally:
        if bar is not None:
            bar.close()


def _start_metrics(service, cfg):
    try:
        from . import metrics
        return metrics.serve(service, cfg.metrics_port, cfg.metrics_address)
    except ImportError:
        raise CliError("metrics_port needs prometheus_client: pip install 'dnnscale[metrics]'")
    except OSError as e:
        raise CliError("cannot serve metrics on %s:%d: %s" % (cfg.metrics_address, cfg.metrics_port,
                                                              e.strerror or e))


def _raise_fd_limit() -> None:
    """Soft descriptor limit up to the hard one: every client connection is a descriptor."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def cmd_serve(a: argparse.Namespace) -> int:
    import signal
    import threading
    from .config import ConfigError
    from .notify import Notifier
    from .server import Server
    from .service import Service
    cfg = _load_config(a)
    _setup_logging(cfg.log_level)
    _raise_fd_limit()
    # Handlers first: a SIGTERM while loading or profiling still ends in a restore.
    stop, reload = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    # Stray signals whose default would kill it without restoring the board: QUIT and ALRM
    # stop it cleanly; USR1 and USR2 mean nothing to it and are ignored.
    signal.signal(signal.SIGQUIT, lambda *_: stop.set())
    signal.signal(signal.SIGALRM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    notifier = Notifier()
    notifier.status("loading %s" % ", ".join(e.model or "the shipped model" for e in cfg.entries()))
    service = Service(cfg, stop_event=stop, config_loader=lambda: _read_config(a), board=a.board)
    server = metrics_server = None
    try:
        try:
            _start_service(service, show_progress=sys.stderr.isatty())
        except CliError as e:
            if e.code != 130:
                raise
            print("dnnscale serve: stopped while starting (%s)" % e, file=sys.stderr)
            return 0   # a requested stop, as systemd asked for it
        server = Server(service, cfg, notifier)
        server.reload_requested = reload
        try:
            server.bind()
        except ConfigError as e:
            raise CliError(str(e))
        if cfg.metrics_port:
            metrics_server = _start_metrics(service, cfg)
        server.serve(stop, ready_status="serving %s on %s" % (", ".join(
            "%s (%d levels)" % (n, x.rt.models.groups) for n, x in service.sets.items()), service.platform.name))
    finally:   # every exit path: the board goes back to its own settings
        if metrics_server is not None:
            metrics_server.shutdown()
        errors = service.stop()
        if server is not None:
            server.close()
        for e in errors:
            print("dnnscale serve: could not restore %s" % e, file=sys.stderr)
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    import signal
    import threading
    from . import profiler
    from .service import Service
    stop = threading.Event()
    cfg = _load_config(a)
    _setup_logging(cfg.log_level)
    cfg.profile_runs = a.runs
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service = Service(cfg, remeasure=True, stop_event=stop, board=a.board)
    try:
        _start_service(service, show_progress=True)   # saves the profile on success
    finally:
        for e in service.stop():
            print("dnnscale profile: could not restore %s" % e, file=sys.stderr)
    for name, x in service.sets.items():
        rt = x.rt
        n, m = len(rt.space), len(profiler.plan_measurements(rt.space))
        print("profiled %s: %d of %d configurations on %s (%s) and predicted the rest; saved in %s"
              % (name, m, n, service.platform.name, rt.governor.profile.source,
                 os.path.join(cfg.state_dir, profiler.filename(x.file_name))))
        prof = rt.governor.profile
        for t in rt.targets:
            cs = [c for c in rt.space if c.target == t]
            top = max((c.freq_khz or 0) for c in cs)
            lat = ["k=%d %.3f ms" % (lv.level, prof.predict(next(c for c in cs if c.level == lv.level and
                                                                  (c.freq_khz or 0) == top), lv.macs)[0] * 1e3)
                   for lv in rt.levels if any(c.level == lv.level for c in cs)]   # a split from k = its lanes
            print("  %-6s %s%s" % (t, ", ".join(lat), " (at %d MHz)" % (top // 1000) if top else ""))
    print("the daemon serving from %s uses it from its next start" % cfg.state_dir)
    return 0


# ---------------------------------------------------------------------------- clients
def _client(a: argparse.Namespace):
    from .client import Client
    return Client(endpoint=getattr(a, "endpoint", None), control_endpoint=getattr(a, "control_endpoint", None),
                  timeout_s=a.timeout, model=getattr(a, "model", None))


def _part(st: Dict, model: Optional[str]) -> Dict:
    """The status of the set named ``model`` (None: the default's, at the top)."""
    return st["models"][model] if model and model in (st.get("models") or {}) else st


def _call(fn):
    from .client import ClientError
    try:
        return fn()
    except ClientError as e:
        raise CliError(str(e), code=1)


def cmd_infer(a: argparse.Namespace) -> int:
    import json
    from . import images as imgs
    from .client import ClientError
    c = _client(a)
    hwc, max_batch, names_of = (32, 32, 3), 64, []
    try:                          # the model's input and the daemon's batch limit, where it says them
        st = c.status()
        m = _part(st, a.model)["model"]
        ch, hh, ww = m["input_shape"]
        hwc, max_batch, names_of = (hh, ww, ch), int(st.get("max_batch") or 64), m.get("classes") or []
    except (ClientError, KeyError, TypeError, ValueError):
        pass
    x, names, problems, notes = imgs.read(a.files, hwc)
    for p, what in problems:
        print("dnnscale infer: %s %s" % (p, what), file=sys.stderr)
    for n in notes:
        print("note: %s" % n, file=sys.stderr)
    if not len(x):
        raise CliError("no image to classify")
    rows, header, batch_ms, energy = [], None, 0.0, 0.0
    for start in range(0, len(x), max_batch):       # what the daemon takes in one request
        chunk = x[start:start + max_batch]
        if a.progressive:
            for res in _call(lambda: list(c.infer_progressive(chunk, groups=a.groups, stop_at=a.stop_at))):
                if not a.json and not res.header.get("final"):
                    print("k=%d so far (%.3f ms): %s" % (res.header["level"], res.latency_ms, ", ".join(
                        "%s %s %.2f" % (names[start + i], nm, pr) for i, (nm, pr) in
                        enumerate(zip(res.header["names"], res.header["probabilities"])))))
        else:
            res = _call(lambda: c.infer(chunk, groups=a.groups, stop_at=a.stop_at))
        header = header or res.header
        batch_ms += res.latency_ms
        energy = None if energy is None or res.energy_mj is None else energy + res.energy_mj
        classes = res.header.get("names") or []
        n = len(res.labels)
        for i, (lab, top) in enumerate(zip(res.labels, imgs.top_k(res.logits))):
            rows.append({"file": names[start + i], "label": lab,
                         "name": classes[i] if i < len(classes) else str(lab),
                         "top": [{"class": j, "p": round(pr, 4)} for j, pr in top],
                         "config": res.config, "latency_ms": res.latency_ms, "batch_images": n,
                         "latency_ms_per_image": round(res.latency_ms / n, 4), "energy_mj": res.energy_mj,
                         **({"groups": res.header["groups_per_image"][i]} if "groups_per_image" in res.header else {})})
    if a.json:
        print(json.dumps({"images": rows, "problems": [{"file": p, "error": w} for p, w in problems]}))
    else:
        cfg = header["config"]
        per_image = batch_ms / len(rows)
        print("config: k=%d on %s at %s, %.3f ms per image%s%s%s" % (
            cfg["groups"], cfg["target"], "%d MHz" % (cfg["freq_khz"] // 1000) if cfg.get("freq_khz")
            else "fixed frequency", per_image,
            " (%d images: %.3f ms in all)" % (len(rows), batch_ms) if len(rows) > 1 else "",
            "" if energy is None else ", %.3f mJ per image" % (energy / len(rows)),
            " (SIMULATED)" if header.get("simulated") else ""))
        for r in rows:
            alts = ", ".join("%s %.2f" % (names_of[t["class"]] if t["class"] < len(names_of) else t["class"], t["p"])
                             for t in r["top"])
            print("%s: %s (p %.2f; top: %s)%s" % (r["file"], r["name"], r["top"][0]["p"], alts,
                                                  "; stopped at k=%d" % r["groups"] if "groups" in r else ""))
    return 1 if problems else 0


def cmd_budget(a: argparse.Namespace) -> int:
    import math
    for flag, v in (("--latency-ms", a.latency_ms), ("--energy-mj", a.energy_mj), ("--power-w", a.power_w)):
        if v is not None and (not math.isfinite(v) or v <= 0):
            raise CliError("%s must be a positive number, got %s" % (flag, v))
    if a.accuracy_min is not None and not 0 <= a.accuracy_min <= 100:
        raise CliError("--accuracy-min must be a top-1 percentage in [0, 100], got %s" % a.accuracy_min)
    if a.miss_rate is not None and a.latency_ms is None:
        raise CliError("--miss-rate is the share of runs that may exceed --latency-ms: give --latency-ms too")
    given = [v for v in (a.latency_ms, a.energy_mj, a.power_w, a.accuracy_min, a.miss_rate) if v is not None]
    c = _client(a)
    if a.clear:
        if given:
            raise CliError("--clear takes no other option")
        r = _call(c.clear_budget)
    elif not given:
        r = {"budget": _part(_call(c.status), a.model)["budget"]}
    else:
        r = _call(lambda: c.set_budget(a.latency_ms, a.energy_mj, a.power_w, a.accuracy_min, miss_rate=a.miss_rate))
    def fmt(b):
        return ", ".join("%s %s" % (k, v) for k, v in b.items() if v is not None)
    print("budget: %s" % (fmt(r["budget"]) or "none (best accuracy at the lowest energy)"))
    if r.get("replaced") is not None and r["replaced"] != r["budget"] and fmt(r["replaced"]):
        print("  (replaced: %s)" % fmt(r["replaced"]))
    if r.get("warning"):
        print("  warning: %s" % r["warning"])
    return 0


def format_status(s) -> str:
    cfg = s.get("config") or {}
    lat = s.get("latency_ms") or {}
    lines = ["platform: %s%s   model: %s (%s, %d levels)" % (
        s["platform"], " (SIMULATED)" if s.get("simulated") else "", s["model"]["name"], s["model"]["kind"],
        s["model"]["levels"])]
    b = {k: v for k, v in s["budget"].items() if v is not None}
    lines.append("budget: %s%s" % (", ".join("%s %s" % kv for kv in b.items()) or "none",
                                   "" if s.get("feasible") in (None, True) else
                                   "   INFEASIBLE: serving the closest configuration (not met: %s)"
                                   % ", ".join(s.get("gave_way") or ["?"])))
    if cfg:
        lines.append("config: k=%s on %s at %s" % (cfg["groups"], cfg["target"],
                     "%d MHz" % (cfg["freq_khz"] // 1000) if cfg.get("freq_khz") else "fixed frequency"))
    if s.get("pinned"):
        lines.append("pinned: %s (dnnscale release to undo)" % _pin_text(s["pinned"]))
    if lat:
        lines.append("latency ms: p50 %.3f  p95 %.3f  p99 %.3f   miss rate %.2f%%   served %d requests%s" % (
            lat["p50"], lat["p95"], lat["p99"], 100 * s["miss_rate"], s["served"],
            " (%d images)" % s["images"] if s.get("images") is not None else ""))
    else:
        lines.append("no inference served yet")
    lines.append("energy: %s" % ("%.3f mJ per inference (mean)" % s["energy_mj_mean"] if s.get("energy_mj_mean")
                                 is not None else s["energy"]["reason"] or "not measured"))
    lines.append("dvfs: %s" % ("on" if s["dvfs"]["enabled"] else "off (%s)" % s["dvfs"]["reason"]))
    if s.get("profile"):
        lines.append("profile: %s%s, %s" % (s["profile"], ", measured %s" % s["profile_created"]
                                            if s.get("profile_created") else "", s.get("profile_file", "")))
    lines.append("targets: %s" % ", ".join(s["targets"]) + ("" if s.get("gpu") in ("available", "none")
                                                           else "   (%s)" % s["gpu"]))
    if s.get("temperatures_c"):
        lines.append("temperatures: %s" % ", ".join("%s %.1f C" % kv for kv in s["temperatures_c"].items()))
    if s.get("errors"):
        lines.append("refused requests: %s" % ", ".join("%s %d" % kv for kv in sorted(s["errors"].items())))
    for name, m in (s.get("models") or {}).items():      # several sets: one line each
        mc, ml = m.get("config") or {}, m.get("latency_ms") or {}
        b = ", ".join("%s %s" % kv for kv in m["budget"].items() if kv[1] is not None) or "no budget"
        lines.append("model %s (priority %d): %s; %s; %s" % (
            name, m["priority"], b,
            "k=%s on %s%s" % (mc["groups"], mc["target"], " at %d MHz" % (mc["freq_khz"] // 1000)
                              if mc.get("freq_khz") else "") if mc else "not run yet",
            "p99 %.3f ms, miss rate %.2f%%, %d requests" % (ml["p99"], 100 * m["miss_rate"], m["served"])
            if ml else "nothing served"))
    return "\n".join(lines)


def cmd_status(a: argparse.Namespace) -> int:
    import json
    s = _call(_client(a).status)
    print(json.dumps(s, indent=1) if a.json else format_status(s))
    return 0


def _pin_text(p) -> str:
    parts = []
    if p.get("groups") is not None:
        parts.append("k=%d" % p["groups"])
    if p.get("target") is not None:
        parts.append("on %s" % p["target"])
    if p.get("freq_khz") is not None:
        parts.append("at %g MHz" % (p["freq_khz"] / 1000))
    return " ".join(parts) or "nothing"


def cmd_pin(a: argparse.Namespace) -> int:
    import math
    if a.groups is None and a.target is None and a.freq_mhz is None:
        raise CliError("give at least one of --groups, --target, --freq-mhz")
    if a.freq_mhz is not None and (not math.isfinite(a.freq_mhz) or a.freq_mhz <= 0):
        raise CliError("--freq-mhz must be a positive number of MHz, got %s" % a.freq_mhz)
    freq = None if a.freq_mhz is None else int(round(a.freq_mhz * 1000))
    r = _call(lambda: _client(a).pin(a.groups, a.target, freq))
    print("pinned: %s" % _pin_text(r["pinned"]))
    if r.get("replaced"):
        print("  (replaced the pin %s)" % _pin_text(r["replaced"]))
    cfg = r.get("config")
    if cfg:
        print("  in effect: k=%d on %s%s" % (cfg["groups"], cfg["target"], " at %g MHz" % (cfg["freq_khz"] / 1000)
                                             if cfg.get("freq_khz") else ""))
    if r.get("warning"):            # the frequency was refused: the rest of the pin holds
        print("dnnscale pin: warning: %s" % r["warning"], file=sys.stderr)
        return 1
    return 0


def cmd_release(a: argparse.Namespace) -> int:
    r = _call(_client(a).release)
    was = r.get("released")
    print("released%s: the governor chooses freely again" % (" the pin %s" % _pin_text(was) if was else ""))
    return 0


def cmd_top(a: argparse.Namespace) -> int:
    import importlib.util
    if importlib.util.find_spec("rich") is None:
        raise CliError("dnnscale top needs rich: pip install 'dnnscale[top]'")
    from . import top
    if not a.interval > 0:
        raise CliError("--interval must be > 0, got %s" % a.interval)
    return top.run(_client(a), interval=a.interval, once=a.once)


def cmd_reload(a: argparse.Namespace) -> int:
    r = _call(_client(a).reload)
    print("reloaded %s; profile: %s" % (r["model"], r["profile"]))
    return 0


# ---------------------------------------------------------------------------- parser
def _version() -> str:
    try:
        from importlib.metadata import version
        return version("dnnscale")
    except Exception:              # a checkout that was never installed
        return "unknown (not installed)"


SYSTEM_HELP = ("the system service's configuration, state and sockets (/etc/dnnscale/config.yaml, "
               "/var/lib/dnnscale, /run/dnnscale), as systemd runs it; without it a user's own "
               "(~/.config/dnnscale, ~/.local/state/dnnscale), root's included")


def build_parser() -> argparse.ArgumentParser:
    from .commands import COMMANDS
    p = argparse.ArgumentParser(
        prog="dnnscale",
        description="Runtime for dynamic (group-incremental) DNNs on embedded boards. "
                    "`dnnscale serve` runs the daemon; the other verbs talk to it or build models.")
    p.add_argument("--version", action="version", version="dnnscale %s" % _version())
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    t = sub.add_parser("train", help="train a group-incremental model set on CIFAR-10 and export it",
                       description="Train group 1 alone, then each next group with the earlier ones "
                                   "frozen; export the per-group ONNX model set with its manifest. "
                                   "Checkpoints after every epoch; --resume continues a stopped run.")
    t.add_argument("--data", required=True, help="the data: CIFAR-10 python batches (cifar-10-batches-py, or a "
                   "folder holding it), IDX files (MNIST/Fashion-MNIST), or an image folder "
                   "(train/<class>/*.png, test/<class>/*.png; see docs/model-set.md)")
    t.add_argument("--image", type=int, default=None, help="input size in pixels (square; default: the data's; "
                   "an image folder's images are scaled on the shorter side and centre-cropped to it)")
    t.add_argument("--channels", type=int, default=None, help="1 (grayscale) or 3 (RGB) (default: the data's)")
    t.add_argument("--classes", type=int, default=None, help="number of classes (default: the data's)")
    t.add_argument("--out", required=True, help="where to write the model set")
    t.add_argument("--kind", choices=("group", "portfolio"), default="group",
                   help="group: incremental groups (the default); portfolio: DNNShifter-style pruned variants")
    t.add_argument("--groups", type=int, default=4, help="number of groups G (default 4)")
    t.add_argument("--levels", type=int, default=10, help="portfolio: pruning levels, 20%% each (default 10)")
    t.add_argument("--level-epochs", type=int, default=10, help="portfolio: retraining epochs per level")
    t.add_argument("--rewind-epoch", type=int, default=2, help="portfolio: weights are rewound to this epoch")
    t.add_argument("--rewind", choices=("weights", "finetune"), default="weights",
                   help="portfolio: retrain each level from the rewound early weights (DNNShifter) "
                        "or fine-tune the trained ones (cheaper)")
    t.add_argument("--ens-weight", type=float, default=0.0,
                   help="group model: add this x the loss of the k=g averaged logits to group g's own loss "
                        "(default 0: own loss only; see docs/model-set.md)")
    t.add_argument("--ens-from", type=int, default=2, help="group model: first group --ens-weight applies to")
    t.add_argument("--erase", type=float, default=0.0, metavar="P",
                   help="group model: random erasing, the probability that a training image gets one "
                        "rectangle (2-40%% of it) blanked (default 0: none)")
    t.add_argument("--swa-epochs", type=int, default=0,
                   help="group model: after a group's epochs, this many more at the constant --swa-lr whose "
                        "weights are averaged (stochastic weight averaging; default 0: none)")
    t.add_argument("--swa-lr", type=float, default=0.01, help="group model: the learning rate of the SWA epochs")
    t.add_argument("--swa-from", type=int, default=1, help="group model: first group --swa-epochs applies to")
    t.add_argument("--epochs", default="30", metavar="N[,N...]",
                   help="epochs per group: one number for every group, or one per group, e.g. "
                        "60,60,60,120 (default 30)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--val", type=int, default=2500,
                   help="training images held out to choose each k's head (default 2500)")
    t.add_argument("--size", choices=("alexnet", "tiny"), default="alexnet",
                   help="column width: the shipped AlexNet-style size, or a tiny one for tests")
    t.add_argument("--width", type=float, default=1.0,
                   help="multiply every conv width and the hidden layer by this (default 1.0); "
                        "training time grows about with the square")
    t.add_argument("--group-widths", default=None, metavar="M,M,...",
                   help="group model: one width multiplier per group (on top of --width), e.g. "
                        "0.35,0.5,0.7,1.0: unequal groups, each later one larger, so k=1 is the "
                        "cheapest network and every added group a stronger member (default: equal "
                        "groups; see docs/model-set.md)")
    t.add_argument("--name", default=None, help="model set name (default: the --out folder name)")
    t.add_argument("--checkpoint-dir", default=None, help="default: OUT/checkpoints")
    t.add_argument("--resume", action="store_true", help="continue the run in the checkpoint folder")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    t.add_argument("--device", default="cpu",
                   help="cpu (default), cuda or cuda:N: where torch trains; the model set is the same "
                        "kind either way, and --resume may continue a run on another device")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="accuracy, confidence, MACs, params and latency per k",
                       description="Evaluate a model set on the test split of its data (CIFAR-10 batches, "
                                   "IDX files or an image folder), for every k.")
    e.add_argument("--model", default=None, help="model-set folder or shipped name (default: the shipped model)")
    e.add_argument("--data", required=True, help="the test data, in any layout train reads")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    e.add_argument("--latency-runs", type=int, default=200, help="batch-1 runs timed per k")
    e.set_defaults(func=cmd_eval)
    co = sub.add_parser("columns", help="give a group set its column graphs (sets exported before they existed)",
                        description="Write the graphs of every range of columns and every head of a group set "
                                    "from its own k1..kG graphs (the same bytes of weights.bin), and list them in "
                                    "its manifest: one inference may then run its columns at once on different "
                                    "processors (docs/model-set.md, \"Columns\"). Needs the onnx package "
                                    "(the train extra).")
    co.add_argument("model", help="model-set folder or shipped name")
    co.set_defaults(func=cmd_columns)
    from .config import KEY_DOCS
    sv = sub.add_parser("serve", help="run the daemon in the foreground (what systemd runs)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Load the model set, the platform adapter and the governor, and serve "
                                    "inference and control requests over ZeroMQ until SIGTERM.",
                        epilog="config file keys (YAML; an example with every key: systemd/config.yaml):\n"
                               + "\n".join("  %-22s %s" % (k, v) for k, v in KEY_DOCS.items()))
    sv.add_argument("--config", default=None, help="YAML config file (default: $DNNSCALE_CONFIG, else "
                    "/etc/dnnscale/config.yaml for the system service, ~/.config/dnnscale/config.yaml otherwise, "
                    "if present)")
    sv.add_argument("--system", action="store_true", help=SYSTEM_HELP)
    sv.add_argument("--model", action="append", default=None, metavar="MODEL",
                    help="model-set folder or shipped name (default: the shipped model); repeat it to serve several "
                         "sets, which requests and commands name by the set's name (the first is the default)")
    sv.add_argument("--platform", default=None, help="platform name (default: detect)")
    sv.add_argument("--sysfs-root", default=None, help="root of the sysfs tree (default /)")
    sv.add_argument("--infer-endpoint", default=None, help="default ipc://<runtime dir>/infer.sock (the system "
                    "service: ipc:///run/dnnscale/infer.sock)")
    sv.add_argument("--control-endpoint", default=None, help="default ipc://<runtime dir>/control.sock")
    sv.add_argument("--state-dir", default=None, help="default $STATE_DIRECTORY, else /var/lib/dnnscale with "
                    "--system, else ~/.local/state/dnnscale")
    sv.add_argument("--threads", type=int, default=None, help="onnxruntime threads per CPU target, at most "
                    "(default: each target as many as its CPUs)")
    sv.set_defaults(func=cmd_serve)

    pr = sub.add_parser("profile", help="measure latency/power per configuration on this board",
                        description="Measure the planned configurations on the live platform, fit the "
                                    "latency and power model, predict the rest, and save the profile to "
                                    "the state directory, where the daemon picks it up at its next start. "
                                    "Refused while a daemon serves from that state directory.")
    for flag in ("--config", "--platform", "--sysfs-root", "--state-dir"):
        pr.add_argument(flag, default=None)
    pr.add_argument("--model", action="append", default=None, metavar="MODEL",
                    help="model-set folder or shipped name; repeat it to profile several sets")
    pr.add_argument("--threads", type=int, default=None)
    pr.add_argument("--system", action="store_true", help=SYSTEM_HELP + "; refused while the service runs")
    pr.add_argument("--runs", type=int, default=20, help="timed runs per configuration (median)")
    pr.set_defaults(func=cmd_profile)

    def client_parser(name, help, infer=False, model=False):
        c = sub.add_parser(name, help=help, description=help)
        if model:
            c.add_argument("--model", default=None, metavar="NAME",
                           help="the model set, where the daemon serves several (default: its first)")
        if infer:
            c.add_argument("--endpoint", default=None, help="inference endpoint (default: where the daemon "
                                                                    "says it listens, its status's infer_endpoint)")
        c.add_argument("--control-endpoint", default=None,
                       help="control endpoint (default: the daemon's ipc socket)")
        c.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")
        return c

    inf = client_parser("infer", "classify images (PNG/JPEG/.npy, or folders of them) with the running daemon; "
                        "each is scaled (shorter side) and centre-cropped to the model's input", infer=True, model=True)
    inf.add_argument("files", nargs="+", metavar="FILE", help="image files, .npy arrays, or folders")
    inf.add_argument("--groups", type=int, default=None, help="force k groups for this request (with --stop-at: "
                                                               "the most an image gets)")
    inf.add_argument("--stop-at", type=float, default=None, metavar="P",
                     help="add groups one at a time and stop each image once its top-1 probability reaches P "
                          "(0 < P <= 1): easy images cost one group, hard ones get more")
    inf.add_argument("--progressive", action="store_true",
                     help="print the answer after every added group, as the daemon computes it")
    inf.add_argument("--json", action="store_true")
    inf.set_defaults(func=cmd_infer)
    bu = client_parser("budget", "show, set or clear the latency/energy budget", model=True)
    bu.add_argument("--latency-ms", type=float, default=None, metavar="MS",
                    help="the most one inference may take (the run in the daemon, not the queue or the network)")
    bu.add_argument("--energy-mj", type=float, default=None, metavar="MJ",
                    help="the most energy per image, where the board measures energy")
    bu.add_argument("--power-w", type=float, default=None, metavar="W", help="an average power cap")
    bu.add_argument("--accuracy-min", type=float, default=None, metavar="PERCENT",
                    help="an accuracy floor (the level's top-1 %%): the governor never chooses a level below "
                         "it; where the latency or energy cannot be met at or above it, they give way")
    bu.add_argument("--miss-rate", type=float, default=None, metavar="FRACTION",
                    help="with --latency-ms: the share of runs that may exceed it (default 0.01); the governor "
                         "keeps a margin over each target's measured tail for it, so a smaller share costs accuracy")
    bu.add_argument("--clear", action="store_true", help="no budget: the best accuracy at the lowest energy")
    bu.set_defaults(func=cmd_budget)
    st = client_parser("status", COMMANDS["status"].doc)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    pn = client_parser("pin", COMMANDS["pin"].doc, model=True)
    pn.add_argument("--groups", type=int, default=None, metavar="K", help="run k groups (1..G)")
    pn.add_argument("--target", default=None, help="run on this target (`dnnscale status` lists them)")
    pn.add_argument("--freq-mhz", type=float, default=None, metavar="MHZ",
                    help="at this frequency (one of the target's steps)")
    pn.set_defaults(func=cmd_pin)
    client_parser("release", COMMANDS["release"].doc, model=True).set_defaults(func=cmd_release)
    tp = client_parser("top", "a live view of the daemon: configuration, latency against the budget, miss rate, "
                              "energy, temperatures, frequencies, corrections; q quits")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    tp.add_argument("--once", action="store_true", help="draw once and exit (no full-screen mode)")
    tp.set_defaults(func=cmd_top)
    client_parser("reload", COMMANDS["reload"].doc).set_defaults(func=cmd_reload)

    pl = sub.add_parser("platform", help="what dnnscale sees on this board",
                        description="Targets with CPUs and frequencies, GPU, power rails, thermal zones.")
    pl.add_argument("--platform", default=None, help="platform name (default: detect); one of "
                    "odroid-xu3, jetson-nano, generic, sim-odroid-xu3, sim-jetson-nano")
    pl.add_argument("--sysfs-root", default="/", help="root of the sysfs tree (a fake tree in tests)")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.set_defaults(func=cmd_platform)
    return p


def main(argv: Optional[List[str]] = None, board: Optional[Dict[str, Any]] = None) -> int:
    """``board``: keyword arguments for :func:`platforms.create` (a test's kernel double)."""
    args = build_parser().parse_args(argv)
    args.board = board or {}
    try:
        return args.func(args)
    except BrokenPipeError:       # `dnnscale status | head`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except CliError as e:
        print("dnnscale %s: error: %s" % (args.verb, e), file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("dnnscale %s: interrupted" % args.verb, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
