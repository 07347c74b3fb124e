"""The daemon's configuration: defaults, the YAML file, command-line overrides; every key
validated, and an error names the key and what is allowed.

Two modes that never share config, state or sockets unless asked: the system service (run
by systemd, or ``--system``) reads ``/etc/dnnscale/config.yaml`` and uses ``$STATE_DIRECTORY``
and ``$RUNTIME_DIRECTORY`` (/var/lib/dnnscale, /run/dnnscale); a user's own daemon, root's
included, reads ``$XDG_CONFIG_HOME/dnnscale/config.yaml`` and uses per-user XDG locations.
``$DNNSCALE_CONFIG`` names a file for either.
"""
from __future__ import annotations

import os
import reprlib
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional


SYSTEM_RUNTIME = "/run/dnnscale"


class ConfigError(ValueError):
    """A configuration file or option is invalid; the message names the key."""


def _user_dir(env: str, fallback: str) -> str:
    base = os.environ.get(env) or os.path.join(os.path.expanduser("~"), fallback)
    return os.path.join(base, "dnnscale")


SYSTEM_STATE = "/var/lib/dnnscale"     # the unit's StateDirectory=dnnscale
SYSTEM_CONFIG = "/etc/dnnscale/config.yaml"


def system_mode() -> bool:
    """The system service: started by systemd with its directories (``$STATE_DIRECTORY``,
    ``$RUNTIME_DIRECTORY``), or asked for with ``--system`` (which sets ``DNNSCALE_SYSTEM=1``).
    Only the system service reads /etc/dnnscale and uses /var/lib/dnnscale and /run/dnnscale:
    a user's own ``dnnscale serve``, root's included, keeps to per-user places."""
    return bool(os.environ.get("STATE_DIRECTORY") or os.environ.get("RUNTIME_DIRECTORY")
                or os.environ.get("DNNSCALE_SYSTEM") == "1")


def default_state_dir() -> str:
    """systemd's $STATE_DIRECTORY; the service's /var/lib/dnnscale in system mode (so that
    `sudo dnnscale profile --system` writes the profile the service reads); else per-user."""
    d = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if d:
        return d
    if system_mode():
        return SYSTEM_STATE
    return _user_dir("XDG_STATE_HOME", ".local/state")


def default_runtime_dir() -> str:
    d = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if d:
        return d
    if system_mode():
        return SYSTEM_RUNTIME
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "dnnscale")
    return "/tmp/dnnscale-%d" % os.getuid()


def default_infer_endpoint(runtime_dir: Optional[str] = None) -> str:
    """An ipc socket in the runtime directory: the system service's is mode 0660 in a 0750
    directory (its group may send), a user's own daemon's is in the user's 0700 directory
    (only that user may send). Not tcp loopback, where any local process could send, and
    a message libzmq holds whole before the daemon can refuse it costs memory."""
    return "ipc://" + os.path.join(runtime_dir or default_runtime_dir(), "infer.sock")


def _system_service_present() -> bool:
    return os.path.isdir(SYSTEM_RUNTIME) and not os.environ.get("RUNTIME_DIRECTORY")


def default_control_endpoint(for_client: bool = False) -> str:
    """The daemon binds its control socket in its runtime directory. A client takes the
    user's own daemon where its socket exists, else the system service's where it runs
    (/run/dnnscale exists: a user outside its group is then told so, not "no daemon")."""
    own = "ipc://" + os.path.join(default_runtime_dir(), "control.sock")
    if for_client and not system_mode() and not os.path.exists(own[len("ipc://"):]) \
            and _system_service_present():
        return "ipc://" + os.path.join(SYSTEM_RUNTIME, "control.sock")
    return own


@dataclass(frozen=True)
class ModelEntry:
    """One model set the daemon serves: ``model`` a folder or a shipped set's name; ``name``
    what requests and commands call it (None: the set's own name, from its manifest);
    ``priority`` 1 first (None: its place in the list): whose budget holds where two cannot
    both be met on the board (governor/board.py)."""
    model: Optional[str] = None
    name: Optional[str] = None
    priority: Optional[int] = None


@dataclass
class Config:
    model: Optional[str] = None            # a model-set folder or a shipped set's name
    models: Optional[List[ModelEntry]] = None   # several sets (instead of model)
    platform: Optional[str] = None         # None: detect
    sysfs_root: str = "/"
    infer_endpoint: Optional[str] = None   # None: ipc in the runtime dir
    control_endpoint: Optional[str] = None  # None: ipc:// in the runtime directory
    control_group: Optional[str] = None    # group owning the ipc control socket (mode 0660)
    infer_group: Optional[str] = None      # group owning an ipc inference socket (default control_group)
    curve_secret_key: Optional[str] = None  # required for a tcp:// control endpoint
    curve_authorized_keys: Optional[str] = None
    state_dir: Optional[str] = None
    runtime_dir: Optional[str] = None
    threads: Optional[int] = None            # None: each CPU target as many as its CPUs
    max_batch: int = 64
    batch_requests: bool = True
    rehearse: bool = True                  # run a change of level once before making it (while idle)
    queue_size: int = 256
    dvfs: bool = True
    gpu: bool = True
    profile_runs: int = 5                  # runs per configuration of the start-up profile
    log_level: str = "info"
    metrics_port: Optional[int] = None     # Prometheus exporter (off unless set)
    metrics_address: str = "127.0.0.1"
    memory_bound_mb: int = 256             # growth over the floor that drops every connection
    stop_at: Optional[float] = None        # anytime answers for requests that name no stop_at
    source: List[str] = field(default_factory=list)   # where the values came from

    def entries(self) -> List[ModelEntry]:
        """The model sets to serve, highest priority first (a set without one counts its place
        in the list, 1 the first; a tie goes to the set that gives its priority, then to the
        one listed first); the first is the default of requests and commands that name none."""
        if not self.models:
            return [ModelEntry(self.model)]
        order = sorted(range(len(self.models)), key=lambda i: (self.models[i].priority or i + 1,
                                                              self.models[i].priority is None, i))
        return [self.models[i] for i in order]

    def resolve(self) -> "Config":
        if self.model is not None and self.models:
            raise ConfigError("give either model (one set) or models (a list), not both")
        self.state_dir = self.state_dir or default_state_dir()
        self.runtime_dir = self.runtime_dir or default_runtime_dir()
        self.control_endpoint = self.control_endpoint or "ipc://" + os.path.join(self.runtime_dir, "control.sock")
        self.infer_endpoint = self.infer_endpoint or default_infer_endpoint(self.runtime_dir)
        self.infer_group = self.infer_group or self.control_group
        return self


# Every key, its meaning (serve --help, systemd/config.yaml and docs/deployment.md show these).
KEY_DOCS = {
    "model": "a model-set folder or a shipped set's name (default: the shipped CIFAR-10 set)",
    "models": "several model sets in one daemon, instead of model: a list of folders or shipped names, or of "
              "{model, name, priority} (name: what requests call it, default the set's own; priority: 1 first, "
              "default the list's order); the first is the default for requests that name none",
    "platform": "odroid-xu3, jetson-nano, generic, sim-odroid-xu3 or sim-jetson-nano (default: detect)",
    "sysfs_root": "root of the sysfs tree, for fake trees (default /)",
    "infer_endpoint": "inference socket, ipc://PATH or tcp://HOST:PORT (default ipc://<runtime_dir>/infer.sock; "
                      "tcp off loopback needs CURVE)",
    "control_endpoint": "control socket (default ipc://<runtime_dir>/control.sock; tcp:// needs CURVE)",
    "control_group": "group that owns the ipc control socket, mode 0660 (default: the daemon's group)",
    "infer_group": "group that owns an ipc inference socket, mode 0660 (default: control_group)",
    "curve_secret_key": "the daemon's CURVE certificate file: required for a tcp:// control endpoint and a "
                        "tcp:// inference endpoint off loopback; where set, every tcp:// endpoint uses CURVE",
    "curve_authorized_keys": "folder of the clients' public CURVE certificates (who may connect over tcp)",
    "state_dir": "saved board settings, budget, profile ($STATE_DIRECTORY; the system service: "
                 "/var/lib/dnnscale; else ~/.local/state/dnnscale)",
    "runtime_dir": "where the ipc sockets live ($RUNTIME_DIRECTORY; the system service: /run/dnnscale; "
                   "else $XDG_RUNTIME_DIR/dnnscale or /tmp/dnnscale-<uid>)",
    "threads": "onnxruntime intra-op threads per CPU target, at most (default: each target as many as its CPUs)",
    "max_batch": "most images in one request, and in one batch (default 64)",
    "batch_requests": "run requests of several clients that arrive together as one batch (default true; false: one request per run)",
    "rehearse": "while no request waits, run once the change of level the governor expects to make next, so that "
                "its first request does not find the level cold (default true; each costs one run's energy; "
                "status rehearsals counts them)",
    "queue_size": "requests queued in all, a quarter of it per client (default 256)",
    "dvfs": "set CPU/GPU frequencies (default true)",
    "gpu": "use the GPU when onnxruntime has a CUDA/TensorRT provider (default true)",
    "profile_runs": "timed runs per configuration of the start-up profile (default 5)",
    "log_level": "debug, info, warning or error (default info)",
    "metrics_port": "serve Prometheus metrics on this TCP port (default: off; needs the metrics extra)",
    "metrics_address": "address of the metrics endpoint (default 127.0.0.1: loopback only)",
    "memory_bound_mb": "how far the daemon's anonymous resident size (its heap) may grow over its floor (a message libzmq holds "
                       "unfinished) before every connection is dropped; default 256, 0 turns it off",
    "stop_at": "the stop_at of requests that name none: add groups one at a time and stop each image once its "
               "top-1 probability reaches it, a number in (0, 1] (default: off, every image gets the chosen k); "
               "set, the anytime step sessions are built at start rather than by the first such request",
}

_TYPES = {f.name: f for f in fields(Config)}
_CHOICES = {"log_level": ("debug", "info", "warning", "error"),
            "platform": (None, "odroid-xu3", "jetson-nano", "generic", "sim-odroid-xu3", "sim-jetson-nano")}
_ENDPOINT_KEYS = ("infer_endpoint", "control_endpoint")
MAX_CONFIG_BYTES = 1 << 20


def _brief(value: Any) -> str:   # for messages: a YAML alias bomb's full repr takes minutes
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 2, 60, 60
    return r.repr(value)


def _entries(value: Any, where: str) -> Optional[List[ModelEntry]]:
    """The ``models`` list: each a folder or shipped name, or a mapping {model, name, priority}."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ConfigError("%s: models must be a non-empty list of model sets, got %s" % (where, _brief(value)))
    out = []
    for i, v in enumerate(value):
        at = "%s: models[%d]" % (where, i)
        if isinstance(v, ModelEntry):
            v = {"model": v.model, "name": v.name, "priority": v.priority}
        if isinstance(v, str):
            v = {"model": v}
        if not isinstance(v, dict):
            raise ConfigError("%s must be a folder or shipped name, or a mapping with model, name, priority; got %s"
                              % (at, _brief(v)))
        unknown = set(v) - {"model", "name", "priority"}
        if unknown:
            raise ConfigError("%s: unknown key(s) %s (allowed: model, name, priority)" % (at, _brief(sorted(map(str, unknown)))))
        if not isinstance(v.get("model"), str) or not v["model"]:
            raise ConfigError("%s: model must be a folder or a shipped set's name, got %s" % (at, _brief(v.get("model"))))
        name, prio = v.get("name"), v.get("priority")
        if name is not None and (not isinstance(name, str) or not name or len(name) > 64
                                 or not all(ch.isalnum() or ch in "-_." for ch in name)):
            raise ConfigError("%s: name must be 1-64 letters, digits, '-', '_' or '.', got %s" % (at, _brief(name)))
        if prio is not None and (isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 1000):
            raise ConfigError("%s: priority must be an integer in 1..1000 (1 first), got %s" % (at, _brief(prio)))
        out.append(ModelEntry(v["model"], name, prio))
    return out


def _check(key: str, value: Any, where: str) -> Any:
    if key == "models":
        return _entries(value, where)
    if key not in _TYPES or key == "source":
        raise ConfigError("%s: unknown key '%s' (allowed: %s)" % (where, key, ", ".join(
            k for k in _TYPES if k != "source")))
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError("%s: %s must be one of %s, got %s" % (where, key, ", ".join(
            str(c) for c in _CHOICES[key] if c), _brief(value)))
    if key in ("max_batch", "queue_size", "profile_runs", "threads", "metrics_port"):
        if value is None and key in ("threads", "metrics_port"):
            return None
        if key == "metrics_port" and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535):
            raise ConfigError("%s: metrics_port must be a TCP port (1-65535), got %s" % (where, _brief(value)))
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
            raise ConfigError("%s: %s must be a positive integer, got %s" % (where, key, _brief(value)))
    elif key == "memory_bound_mb":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
            raise ConfigError("%s: memory_bound_mb must be an integer >= 0 (MB; 0 turns it off), got %s"
                              % (where, _brief(value)))
    elif key == "stop_at":
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value <= 1):
            raise ConfigError("%s: stop_at must be a top-1 probability in (0, 1] or null, got %s" % (where, _brief(value)))
        return None if value is None else float(value)
    elif key in ("dvfs", "gpu", "batch_requests", "rehearse"):
        if not isinstance(value, bool):
            raise ConfigError("%s: %s must be true or false, got %s" % (where, key, _brief(value)))
    elif value is not None and not isinstance(value, str):
        raise ConfigError("%s: %s must be a string, got %s" % (where, key, _brief(value)))
    if key in _ENDPOINT_KEYS and value is not None and not value.startswith(("tcp://", "ipc://")):
        raise ConfigError("%s: %s must be tcp://HOST:PORT or ipc://PATH, got %s" % (where, key, _brief(value)))
    return value


def default_paths() -> List[str]:
    """$DNNSCALE_CONFIG; then the system service's /etc/dnnscale/config.yaml (in system mode
    only), else the user's own ~/.config/dnnscale/config.yaml."""
    out = []
    if os.environ.get("DNNSCALE_CONFIG"):
        out.append(os.environ["DNNSCALE_CONFIG"])
    if system_mode():
        out.append(SYSTEM_CONFIG)
        return out
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    out.append(os.path.join(xdg, "dnnscale", "config.yaml"))
    return out


def load(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """Defaults ← the config file (``path``, or the first default location that exists)
    ← ``overrides`` (command-line options that were given)."""
    cfg = Config()
    if path is None:
        path = next((p for p in default_paths() if os.path.isfile(p)), None)
    elif not os.path.isfile(path):
        raise ConfigError("config file %s %s" % (path, "is not a regular file (for no configuration, give an "
                                                       "empty file)" if os.path.exists(path) else "does not exist"))
    if path:
        from models.manifest import read_yaml   # here: clients import this module, not onnxruntime
        try:
            data = read_yaml(path, MAX_CONFIG_BYTES, "dnnscale configuration", "YAML configuration")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError("%s must be a YAML mapping of keys to values" % path)
        for k, v in data.items():
            key = k if isinstance(k, str) else _brief(k)
            setattr(cfg, key, _check(key, v, path))
        cfg.source.append(path)
    for k, v in (overrides or {}).items():
        if v is not None:
            if k in ("model", "models"):      # a model named on the command line replaces the file's
                cfg.model = cfg.models = None
            setattr(cfg, k, _check(k, v, "--" + k.replace("_", "-")))
    try:
        return cfg.resolve()
    except ConfigError as e:
        raise ConfigError("%s: %s" % (", ".join(cfg.source) or "the options", e)) from None


def check_socket_dir(path: str, for_client: bool = False) -> None:
    """Refuse an ipc socket whose directory another user could have made or can write: in
    a world-writable parent (``/tmp/dnnscale-<uid>`` outside systemd), the directory must be
    ours; wherever it is, nobody but its owner may write it (the daemon also requires to own it).
    A client talking to an attacker's socket would hand it budgets and believe its status."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    try:
        st = os.stat(d)
        parent = os.stat(os.path.dirname(d) or "/")
    except FileNotFoundError:
        return
    me = os.geteuid()
    who = "dnnscale" if not for_client else "this client"
    if parent.st_mode & 0o002 and st.st_uid != me:
        raise ConfigError("%s is owned by uid %d, not by you (uid %d), in the world-writable %s: another user "
                          "may have made it; %s refuses to use it (remove it, or set runtime_dir)"
                          % (d, st.st_uid, me, os.path.dirname(d), who))
    if st.st_mode & 0o022 and not (st.st_mode & 0o1000 and st.st_uid == me):
        raise ConfigError("%s is writable by other users (mode %o): %s refuses to use a socket there"
                          % (d, st.st_mode & 0o7777, who))
    if not for_client and st.st_uid != me:
        raise ConfigError("%s is owned by uid %d, not by the daemon's user (uid %d): refusing to bind a socket "
                          "there" % (d, st.st_uid, me))
