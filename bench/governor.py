"""The governor against its baselines (issue 4).

(a) Simulated XU3 and Nano (bench/scenarios.py): budget changes, a background load that
    appears and disappears, a thermal cap. Simulated time; every figure labelled simulated.
(b) This machine, for real: the generic platform, real onnxruntime inference of the model
    set, and a real competing CPU-bound process that starts and stops; once with the
    inference at the competitors' niceness (0), once at the systemd unit's ``Nice=``, as
    deployed. No energy sensor here, so energy is not reported for (b).

Per policy: deadline-miss rate (outside the first 20 inferences after each change), mean
accuracy of the served configurations, energy per inference, number of switches.

    python -m bench.governor [--model DIR] [--real] [--plot docs/governor.png]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from . import scenarios as S
from .common import ROOT, machine, table


def simulated(levels) -> List[Dict]:
    """Every policy per scenario, and dnnscale again with the split targets in its space."""
    out = []
    for sc in S.scenarios():
        out += [S.run(sc, p, levels) for p in S.POLICIES]
        out.append(dict(S.run(sc, "dnnscale", levels, splits=True), policy="dnnscale, with splits"))
    return out


def measured(model_dir: str) -> List[Dict]:
    """(b): the real run at niceness 0, then at the systemd unit's."""
    return real(model_dir) + real(model_dir, nice=unit_nice())


def _vs(energy_mj: float, perf_mj: float) -> str:
    return "%+.1f%%" % (100 * (energy_mj / perf_mj - 1))


def _burner() -> subprocess.Popen:
    """A real CPU-bound competitor (one busy Python process per CPU), at niceness 0."""
    code = "import os\nwhile True: pass"
    return subprocess.Popen([sys.executable, "-c", code], preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, 0))


def unit_nice() -> int:
    """The niceness systemd/dnnscale.service gives the daemon (0 if it sets none)."""
    for line in open(os.path.join(ROOT, "systemd", "dnnscale.service")):
        if line.strip().startswith("Nice="):
            return int(line.split("=", 1)[1])
    return 0


def _set_nice(value: int) -> None:
    """Every thread of this process to niceness ``value``: Linux keeps it per thread, and
    onnxruntime's pool threads may be older than this call (systemd's Nice= covers them all
    from the start). Lowering it needs root or CAP_SYS_NICE (PermissionError)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), value)
        except ProcessLookupError:   # a thread that has just exited
            pass


def real(model_dir: str, n: int = 900, settle: int = 20, nice: Optional[int] = None) -> List[Dict]:
    """The model set on this machine's generic platform with a competing process in the
    middle third; budget = 1.3x the quiet k=G latency on all CPUs. ``nice``: run the
    inference at this niceness (the competitors stay at 0), as the systemd unit does."""
    if nice is None:
        return _real(model_dir, n, settle, "")
    before = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        _set_nice(nice)
    except PermissionError:
        _set_nice(before)
        print("governor: the run at nice %d needs root or CAP_SYS_NICE: skipped" % nice, file=sys.stderr)
        return []
    try:
        return _real(model_dir, n, settle, ", inference at nice %d" % nice)
    finally:
        _set_nice(before)


def _real(model_dir: str, n: int, settle: int, label: str) -> List[Dict]:
    import platforms
    from daemon.executor import Executor
    from daemon import profiler
    from daemon.runtime import Builder, Runtime
    from governor import Budget, Governor, build_space, levels_from_manifest
    from models import ModelSet
    plat = platforms.create("generic")
    ms = ModelSet.load(model_dir, lanes=Builder(plat).lanes())      # each lane its own thread count, as served
    levels = levels_from_manifest(ms.manifest)
    space = build_space(levels, {n: [] for n, t in plat.targets.items() if not t.is_split})
    ex = Executor(plat)
    quiet = profiler.measure(ex, ms, space, levels, runs=30)
    burners = [_burner() for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.3)
        loaded = profiler.measure(ex, ms, space, levels, runs=30)   # what the oracle knows in advance
    finally:
        for b in burners:
            b.kill()
            b.wait()
    G = ms.groups
    budget_ms = 1.3 * quiet.predict(next(c for c in space if c.level == G and c.target == "cpu"),
                                     levels[-1].macs)[0] * 1e3
    x = np.zeros((1,) + ms.input_shape, np.float32)
    acc = {l.level: l.accuracy for l in levels}
    results = []
    for name in ("dnnscale", S.FIXED, "performance", "step (Dynamic-OFA)", "oracle"):
        if name == "oracle":
            pol = _KnownTrace(Governor(space, levels, quiet), Governor(space, levels, loaded), n)
        else:
            pol = S.policy_from_profile(name, space, levels, quiet, targets=plat.targets)
        pol.set_budget(Budget(latency_ms=budget_ms))
        rt = Runtime(ms, model_dir, dict(plat.targets), "", levels, space, quiet, False, pol)
        burners: List[subprocess.Popen] = []
        rows = []
        since = 0
        try:
            for i in range(n):
                if i in (n // 3, 2 * n // 3):
                    since = 0
                    if i == n // 3:
                        burners = [_burner() for _ in range(os.cpu_count() or 1)]
                        time.sleep(0.2)
                    else:
                        for b in burners:
                            b.kill()
                            b.wait()
                        burners = []
                _, info = ex.infer(rt, x)
                c = info["config"]
                rows.append((info["latency_ms"] > budget_ms, acc[c["groups"]], (c["groups"], c["target"]),
                             since >= settle))
                since += 1
                time.sleep(0.005)
        finally:
            for b in burners:
                b.kill()
        counted = [r for r in rows if r[3]]
        results.append({"scenario": "this machine, budget %.2f ms, competing process%s" % (budget_ms, label),
                        "board": "this machine (real)", "policy": name,
                        "miss_rate": float(np.mean([r[0] for r in counted])),
                        "accuracy": float(np.mean([r[1] for r in rows])), "energy_mj": None,
                        "switches": sum(1 for a, b in zip(rows, rows[1:]) if a[2] != b[2])})
    plat.stop()
    return results


def sweep_report(levels) -> str:
    """The saving against performance per steady latency budget, per simulated board."""
    out = ["Steady budgets, no load, no cap (SIMULATED boards): energy per inference against "
           "performance (full model, top frequency) as the budget loosens; budget as a multiple of "
           "the board's fastest full-model latency:\n"]
    for board in ("sim-odroid-xu3", "sim-jetson-nano"):
        rows = []
        for r in S.sweep(board, levels):
            perf = r["performance"]["energy_mj"]
            cell = lambda p: "%s (%.1f mJ)" % (_vs(r[p]["energy_mj"], perf), r[p]["energy_mj"])
            rows.append(["none" if r["multiple"] is None else "%.3gx = %.2f ms" % (r["multiple"], r["budget_ms"]),
                         cell("dnnscale"), r["dnnscale"]["accuracy"], 100 * r["dnnscale"]["miss_rate"],
                         cell("oracle"), r["oracle"]["accuracy"], 100 * r["performance"]["miss_rate"]])
        out.append("**%s**\n" % board)
        out.append(table(["latency budget", "dnnscale energy", "dnnscale acc %", "dnnscale miss %",
                          "oracle energy", "oracle acc %", "performance miss %"], rows))
        out.append("")
    return "\n".join(out)


def decision_cost(levels, n: int = 5000) -> str:
    """Median and p99 time of one ``Governor.decide`` on each simulated board's full space,
    in a closed loop (each decision's outcome is observed before the next)."""
    import time as _t
    from governor import Budget, Governor
    from platforms.sim import SimBoard
    rows = []
    for name in ("sim-odroid-xu3", "sim-jetson-nano"):
        board = SimBoard(name)
        space = S.board_space(board, levels)
        g = Governor(space, levels, S.measure_profile(SimBoard(name), space, levels))
        fastest = min(g.profile.predict(c, l.macs)[0] for c in space for l in levels if l.level == c.level)
        g.set_budget(Budget(latency_ms=3 * fastest * 1e3))
        macs = {l.level: l.macs for l in levels}
        times = []
        for _ in range(n):
            t0 = _t.perf_counter()
            d = g.decide()
            times.append(_t.perf_counter() - t0)
            board.set_frequency(d.config.target, d.config.freq_khz)
            lat, en = board.run(macs[d.config.level], d.config.target)
            g.observe(d.config, lat, en)
        rows.append([name + " space", len(space), float(np.median(times)) * 1e6, float(np.percentile(times, 99)) * 1e6])
    return ("Decision cost on this machine (target < 50 µs):\n\n" +
            table(["configuration space", "configurations", "median µs", "p99 µs"], rows))


class _KnownTrace:
    """The real-machine oracle: knows when the competing process runs (the middle third) and
    switches at once to a governor whose profile was measured under that load. Each of its two
    governors corrects itself from the inferences it decided, as the governor does."""

    def __init__(self, quiet, loaded, n: int):
        self.quiet, self.loaded, self.n, self.i = quiet, loaded, n, 0
        self.active = quiet

    def set_budget(self, budget) -> None:
        self.quiet.set_budget(budget)
        self.loaded.set_budget(budget)

    def decide(self, deadline_ms=None, level=None):
        self.active = self.loaded if self.n // 3 <= self.i < 2 * self.n // 3 else self.quiet
        self.i += 1
        return self.active.decide(deadline_ms, level)

    def observe(self, *a, **kw) -> None:
        self.active.observe(*a, **kw)


def report(rows: List[Dict]) -> str:
    out = []
    for scen in dict.fromkeys(r["scenario"] for r in rows):
        rs = [r for r in rows if r["scenario"] == scen]
        perf = next((r for r in rs if r["policy"] == "performance"), None)
        label = "SIMULATED board" if rs[0]["board"].startswith("sim") else "measured on this machine"
        out.append("**%s** (%s)\n" % (scen, label))
        out.append(table(["policy", "miss rate %", "mean accuracy %", "energy/inference mJ", "vs performance",
                          "switches"],
                         [[r["policy"], 100 * r["miss_rate"], r["accuracy"],
                           "n/a (no sensor)" if r["energy_mj"] is None else r["energy_mj"],
                           "-" if r["energy_mj"] is None or perf is None else
                           _vs(r["energy_mj"], perf["energy_mj"]), r["switches"]] for r in rs]))
        out.append("")
    return "\n".join(out)


def plot(levels, path: str) -> Optional[str]:
    """Latency against the budget and the chosen k over time, per simulated board."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    scs = S.scenarios()
    fig, axes = plt.subplots(2, len(scs), figsize=(6 * len(scs), 6), sharex=True)
    for j, sc in enumerate(scs):
        tr = S.run(sc, "dnnscale", levels)["trace"]
        i = [t[0] for t in tr]
        axes[0, j].plot(i, [t[1] for t in tr], lw=0.6, label="latency (simulated)")
        axes[0, j].plot(i, [t[6] if t[6] is not None else np.nan for t in tr], "k--", lw=1, label="budget")
        axes[0, j].set_ylabel("ms")
        axes[0, j].set_title(sc.name + " (SIMULATED)", fontsize=9)
        axes[0, j].legend(fontsize=7)
        axes[1, j].step(i, [t[3] for t in tr], where="post", lw=1)
        axes[1, j].set_ylabel("groups k")
        axes[1, j].set_xlabel("inference")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--real", action="store_true", help="also run (b) on this machine (about 4 minutes; "
                   "once at niceness 0 and once at the systemd unit's Nice=, which needs root)")
    p.add_argument("--plot", default=None, help="write the latency/k plot here (needs matplotlib)")
    a = p.parse_args(argv)
    from governor import levels_from_manifest
    from models import manifest as mf, zoo
    model = a.model or zoo.default_path()
    levels = levels_from_manifest(mf.read(model))
    rows = simulated(levels)
    if a.real:
        rows += measured(model)
    print("Machine: %s\n" % machine())
    print(report(rows))
    print(sweep_report(levels))
    print(decision_cost(levels))
    if a.plot:
        print("plot: %s" % (plot(levels, a.plot) or "skipped (pip install matplotlib)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
