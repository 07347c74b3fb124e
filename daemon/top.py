"""``dnnscale top``: a live view of the running daemon, as jtop users expect: the
configuration in use, latency against the budget over the last minute, the miss rate,
energy, temperatures, frequencies and the governor's corrections, refreshed every second
(``--interval``); q quits. Drawn with rich (the ``top`` extra)."""
from __future__ import annotations

import collections
import os
import select
import sys
import time
from typing import Deque, Dict, Optional

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values, top: Optional[float] = None) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return ""
    hi = top or max(vals) or 1.0
    return "".join(BARS[min(len(BARS) - 1, int(v / hi * (len(BARS) - 1)))] if v is not None else " "
                   for v in values)


def render(s: Dict, history: Deque):
    from rich.panel import Panel
    from rich.table import Table
    from rich.console import Group
    cfg = s.get("config") or {}
    b = {k: v for k, v in (s.get("budget") or {}).items() if v is not None}
    lat = s.get("latency_ms") or {}
    head = Table.grid(padding=(0, 2))
    head.add_row("platform", "%s%s" % (s["platform"], " (SIMULATED)" if s.get("simulated") else ""),
                 "model", "%s, %d levels" % (s["model"]["name"], s["model"]["levels"]))
    head.add_row("config", "k=%s on %s at %s" % (cfg.get("groups", "-"), cfg.get("target", "-"),
                                                 "%g MHz" % (cfg["freq_khz"] / 1000) if cfg.get("freq_khz")
                                                 else "fixed frequency") if cfg else "no inference yet",
                 "budget", ", ".join("%s %s" % kv for kv in b.items()) or "none")
    pin = s.get("pinned") or {}
    pin_text = " ".join(t for t in ("k=%s" % pin["groups"] if "groups" in pin else "",
                                    "on %s" % pin["target"] if "target" in pin else "",
                                    "at %g MHz" % (pin["freq_khz"] / 1000) if "freq_khz" in pin else "") if t)
    head.add_row("pinned", pin_text or "no", "feasible", str(s.get("feasible")))
    head.add_row("served", str(s.get("served", 0)), "miss rate", "%.2f%%" % (100 * (s.get("miss_rate") or 0)))
    p95 = [h for h in history]
    limit = b.get("latency_ms")
    line = sparkline(p95, top=max([v for v in p95 if v is not None] + [limit or 0]) or None)
    latt = Table(title="latency, last %d s" % len(history), show_header=True, expand=True)
    latt.add_column("p50 ms")
    latt.add_column("p95 ms")
    latt.add_column("p99 ms")
    latt.add_column("budget ms")
    latt.add_column("p95 over time")
    latt.add_row(*(("%.3f" % lat[q]) if lat else "-" for q in ("p50", "p95", "p99")),
                 "%g" % limit if limit else "-", line)
    side = Table(show_header=True, expand=True)
    side.add_column("target")
    side.add_column("frequency")
    side.add_column("correction")
    side.add_column("margin")
    for t in s.get("targets", {}):
        f = (s.get("frequencies_khz") or {}).get(t)
        side.add_row(t, "%g MHz" % (f / 1000) if f else "-", str((s.get("corrections") or {}).get(t, "-")),
                     str((s.get("margins") or {}).get(t, "-")))
    parts = [head, latt, side]
    if s.get("models"):              # several sets: one row each (the panel above is the default's)
        sets = Table(title="model sets", show_header=True, expand=True)
        for col in ("set", "priority", "budget", "config", "p99 ms", "miss rate", "served"):
            sets.add_column(col)
        for name, m in s["models"].items():
            mc, ml = m.get("config") or {}, m.get("latency_ms") or {}
            sets.add_row(name, str(m.get("priority", "-")),
                         ", ".join("%s %s" % kv for kv in (m.get("budget") or {}).items() if kv[1] is not None)
                         or "none",
                         "k=%s on %s" % (mc["groups"], mc["target"]) if mc else "-",
                         "%.3f" % ml["p99"] if ml else "-", "%.2f%%" % (100 * (m.get("miss_rate") or 0)),
                         str(m.get("served", 0)))
        parts.append(sets)
    env = Table.grid(padding=(0, 2))
    en = s.get("energy_mj_mean")
    env.add_row("energy", "%.3f mJ per inference" % en if en is not None else (s.get("energy") or {}).get("reason")
                or "not measured")
    env.add_row("temperatures", ", ".join("%s %.1f C" % kv for kv in (s.get("temperatures_c") or {}).items())
                or "none")
    env.add_row("dvfs", "on" if s["dvfs"]["enabled"] else "off (%s)" % s["dvfs"]["reason"])
    if s.get("errors"):
        env.add_row("refused", ", ".join("%s %d" % kv for kv in sorted(s["errors"].items())))
    return Panel(Group(*parts, env), title="dnnscale top", subtitle="q quits")


def run(client, interval: float = 1.0, once: bool = False) -> int:
    from rich.console import Console
    from rich.live import Live
    from .client import ClientError
    console = Console()
    history: Deque = collections.deque(maxlen=60)
    tty = sys.stdin.isatty()
    stdin_open = True
    old = None
    if tty:
        import termios
        import tty as ttymod
        old = termios.tcgetattr(sys.stdin.fileno())
        ttymod.setcbreak(sys.stdin.fileno())
    try:
        with Live(console=console, refresh_per_second=4, screen=not once) as live:
            while True:
                try:
                    s = client.status()
                    history.append((s.get("latency_ms") or {}).get("p95"))
                    live.update(render(s, history))
                except ClientError as e:
                    if once:               # one look, and nothing to look at: say so in the exit status
                        live.update("dnnscale top: %s" % e)
                        return 1
                    live.update("dnnscale top: %s (retrying)" % e)
                if once:
                    return 0
                end = time.monotonic() + interval
                while time.monotonic() < end:
                    if not stdin_open:
                        time.sleep(max(0.0, end - time.monotonic()))
                        break
                    r, _, _ = select.select([sys.stdin], [], [], max(0.0, end - time.monotonic()))
                    if r:
                        key = os.read(sys.stdin.fileno(), 1)
                        if key in (b"q", b"Q"):
                            return 0
                        stdin_open = key != b""
    finally:
        if old is not None:
            import termios
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, old)
