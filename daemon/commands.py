"""The control commands, one object each: its keys, what it does (one line, for
docs/protocol.md and the CLI's help), whether it runs under the service's lock, and its
execution. The decoder (``decode``), ``Service.control`` and the client's methods follow
from this table; tests/test_runtime.py checks that each has its client method, CLI verb and
row in docs/protocol.md."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Sequence, Tuple

from governor import Budget

from .protocol import ProtocolError, brief, parse_json, scalar_id


@dataclass(frozen=True)
class Command:
    name: str
    keys: Tuple[str, ...]
    doc: str
    run: Callable[[Any, Dict], Dict]      # (service, arguments) → the reply's fields
    locked: bool = True                   # under the service's lock (the governor and the board)


def _set_budget(svc, args: Dict) -> Dict:
    args = dict(args)
    s = svc.pick(args.pop("model", None))
    try:
        budget = Budget(**args).validate()
    except TypeError as e:
        raise ProtocolError("bad_budget", str(e))
    except ValueError as e:       # its message repeats the value: cut to an excerpt
        raise ProtocolError("bad_budget", str(e)[:200])
    if budget.empty:
        raise ProtocolError("bad_budget", "give at least one of latency_ms, energy_mj, power_w, accuracy_min "
                            "(or use clear_budget)")
    reply = _named(svc, s, svc.save_budget(s, budget))
    if (budget.energy_mj is not None or budget.power_w is not None) and not svc.energy_measured:
        reply["warning"] = ("nothing measures energy here (%s): the energy/power part of the budget cannot be "
                            "enforced" % svc.energy_reason)
    return reply


def _pin(svc, args: Dict) -> Dict:
    s = svc.pick(args.get("model"))
    g, t, f = args.get("groups"), args.get("target"), args.get("freq_khz")
    if g is None and t is None and f is None:
        raise ProtocolError("bad_pin", "pin needs at least one of groups, target, freq_khz (release removes a pin)")
    n = s.rt.models.groups
    if g is not None and (isinstance(g, bool) or not isinstance(g, int) or not 1 <= g <= n):
        raise ProtocolError("bad_pin", "groups must be an integer in 1..%d, got %s" % (n, brief(g)))
    if t is not None and (not isinstance(t, str) or t not in s.rt.targets):
        raise ProtocolError("bad_pin", "target must be one of %s, got %s" % (", ".join(s.rt.targets), brief(t)))
    if f is not None:
        if isinstance(f, bool) or not isinstance(f, int) or not 0 < f < 10 ** 9:
            raise ProtocolError("bad_pin", "freq_khz must be a positive integer (kHz), got %s" % brief(f))
        have = sorted({c.freq_khz for c in s.rt.space if c.freq_khz is not None and (t is None or c.target == t)})
        if not have:
            raise ProtocolError("bad_pin", "no frequency can be pinned: %s" % (
                (svc.platform.dvfs_reason_for(t) if t else svc.platform.dvfs_reason)
                or "the target has no frequency control"))
        if f not in have:
            raise ProtocolError("bad_pin", "%d MHz (%d kHz) is not an available frequency%s; choose from %s MHz"
                                % (f // 1000, f, "" if t is None else " of " + t,
                                   ", ".join("%g" % (x / 1000) for x in have)))
    gov = s.rt.governor
    replaced = dict(gov.pinned)
    try:
        gov.pin(level=g, target=t, freq_khz=f)
    except ValueError as e:
        raise ProtocolError("bad_pin", "%s (targets: %s)" % (e, ", ".join(s.rt.targets)))
    # Take effect now: a user who pins 1200 MHz reads 1200 MHz back, not after the next inference.
    warning = svc.apply_now(s)
    gov = s.rt.governor                   # rebuilt without frequencies where the write failed
    reply = {"pinned": gov.pinned, "replaced": replaced}
    if warning:
        reply["warning"] = warning        # the pin's frequency went with DVFS; the rest of it holds
    if gov.current is not None:
        reply["config"] = svc.executor.reported(gov.space[gov.current])
    return _named(svc, s, reply)


def _cleared(svc, s) -> Dict:
    return _named(svc, s, svc.save_budget(s, Budget()))


def _named(svc, s, reply: Dict) -> Dict:
    """Where several sets are served, a reply names the one it acted on."""
    if len(svc.sets) > 1:
        reply["model"] = s.name
    return reply


def _release(svc, args: Dict) -> Dict:
    s = svc.pick(args.get("model"))
    replaced = dict(s.rt.governor.pinned)
    s.rt.governor.release()
    return _named(svc, s, {"pinned": {}, "released": replaced})


COMMANDS: Dict[str, Command] = {c.name: c for c in (
    Command("set_budget", ("latency_ms", "energy_mj", "power_w", "accuracy_min", "model", "miss_rate"),
            "set a model set's latency/energy/power budget, accuracy floor and the share of runs that may exceed "
            "its latency (saved; the governor meets it with the best accuracy)", _set_budget),
    Command("clear_budget", ("model",), "no budget: the best accuracy at the lowest energy",
            lambda svc, a: _cleared(svc, svc.pick(a.get("model")))),
    Command("status", (), "what the daemon is doing (every model set's part under models)",
            lambda svc, a: svc.status(), locked=False),
    Command("pin", ("groups", "target", "freq_khz", "model"),
            "fix (part of) a model set's configuration: groups, target, frequency", _pin),
    Command("release", ("model",), "undo pin: let the governor choose", _release),
    Command("reload", (), "re-read the config, re-verify and reload the model set and the stored profile",
            lambda svc, a: svc.reload(), locked=False),
)}


def decode(frames: Sequence[bytes]) -> Tuple[Any, str, Dict]:
    """One control message → (id, command name, arguments), its keys checked against the table."""
    if len(frames) != 1:
        raise ProtocolError("bad_frames", "a control message is one JSON frame, got %d" % len(frames))
    msg = parse_json(frames[0], "the control message")
    rid = msg.get("id")
    if not scalar_id(rid):
        raise ProtocolError("bad_request", "id must be a JSON scalar")
    cmd = msg.get("cmd")
    if not isinstance(cmd, str) or cmd not in COMMANDS:
        raise ProtocolError("unknown_command", "unknown command %s (commands: %s)" % (brief(cmd), ", ".join(COMMANDS)))
    args = {k: v for k, v in msg.items() if k not in ("cmd", "id")}
    keys = COMMANDS[cmd].keys
    unknown = set(args) - set(keys)
    if unknown:
        raise ProtocolError("bad_properties", "%s does not take %s (it takes: %s)" % (
            cmd, brief(sorted(unknown)), ", ".join(sorted(keys)) or "nothing"))
    return rid, cmd, args
