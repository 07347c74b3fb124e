"""Two model sets in one daemon, two clients, two budgets.

Real (this machine): ``dnnscale serve --model cifar10-g4 --model fashion-mnist-g4``; two
client threads, one per set, each sending batch-1 requests with a gap, both at once. First
each set's tails with both running (k=1 and k=G pinned, p99, the lowest over the targets); each budget
is a point between its set's two tails (``--at``). Then, in alternating blocks, the governed
phase (each set's budget set through its own ``model``) and each static phase (both sets
pinned to the same k and target, for every one the space has); per set: misses over its
budget, mean accuracy (the manifest's, of the level each reply ran), and the best static in
hindsight (the most accurate configuration that kept <= 1% misses in the same block).

SIMULATED (``--sim``): the same two sets' levels on the simulated XU3 and Nano, requests
alternating between the sets, each set with its own latency budget (a multiple of its
fastest full-model latency); the joint decision (one governor.Board) against two
independent governors (each decides as if alone; the executor writes whatever each asks,
paying the clock's settle time at each change), as the daemon's executor applies them.

Memory (``--memory``): the daemon's proportional set size serving one set and serving both,
beside the added set's weight file; the sets packed (as served) and unpacked
(``DNNSCALE_PACK=0``), alternating.

Decision cost (``--decide``): µs per decision, one governor alone against two sets through
one Board, alternating blocks.

    python -m bench.multi [--requests N] [--blocks B] [--at F] [--sim] [--sim-only] [--memory] [--decide]
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import psutil

from .common import machine, running_daemon, serving, spread, table

SETS = ("cifar10-g4", "fashion-mnist-g4")
SETTLE = 20        # replies at the start of each phase left out of the miss rate


def _stream(c, name: str, x: np.ndarray, n: int, gap_s: float, out: List) -> None:
    for _ in range(n):
        r = c.infer(x, model=name)
        out.append((r.latency_ms, r.config["groups"], r.config["target"]))
        time.sleep(gap_s)


def _both(clients: Dict, xs: Dict, n: int, gaps: Dict) -> Dict[str, List]:
    """Both sets' streams at once; each reply's (latency ms, k, target)."""
    out = {name: [] for name in clients}
    threads = [threading.Thread(target=_stream, args=(clients[nm], nm, xs[nm], n, gaps[nm], out[nm]))
               for nm in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def real(n: int, blocks: int, at: float, gaps_ms: Sequence[float], nice: int = 0,
         miss_rate: Optional[float] = None) -> Dict:
    from daemon.client import Client, DaemonError
    with serving(list(SETS), profile_runs=10, nice=nice) as c0:
        st = c0.status()
        acc = {nm: st["models"][nm]["model"]["accuracy"] for nm in SETS}
        xs = {nm: np.zeros([1] + st["models"][nm]["model"]["input_shape"][1:] + [st["models"][nm]["model"]
                                                                                 ["input_shape"][0]], np.uint8)
              for nm in SETS}
        gaps = {nm: g / 1e3 for nm, g in zip(SETS, gaps_ms)}
        clients = {nm: Client(c0.endpoint, c0.control_endpoint, timeout_s=30) for nm in SETS}
        G = {nm: len(acc[nm]) for nm in SETS}

        def pin_all(k, target):
            for nm in SETS:
                c0.pin(groups=min(k, G[nm]), target=target, model=nm)
        statics = []
        for t in st["targets"]:
            for k in range(1, max(G.values()) + 1):
                try:
                    pin_all(k, t)
                    statics.append((k, t))
                except DaemonError:          # not in the space (a split of n lanes: k >= n)
                    pass
        # each set's tails at k=1 and k=G, both running: the lowest p99 over the targets
        tails = {nm: {} for nm in SETS}
        for k, t in statics:
            if k in (1, max(G.values())):
                pin_all(k, t)
                got = _both(clients, xs, max(n, 300), gaps)
                for nm in SETS:
                    p99 = float(np.percentile([ms for ms, *_ in got[nm][SETTLE:]], 99))
                    kk = min(k, G[nm])
                    tails[nm][kk] = min(tails[nm].get(kk, p99), p99)
        budgets = {nm: tails[nm][1] + at * (tails[nm][G[nm]] - tails[nm][1]) for nm in SETS}
        phases = ["governed"] + statics
        res = {p: {nm: [] for nm in SETS} for p in phases}
        causes = {nm: {} for nm in SETS}        # of the governed phases' misses (status)
        moves = []                              # the threads' moves to another target per governed block
        for b in range(blocks):
            for p in phases:
                if p == "governed":
                    for nm in SETS:
                        c0.release(model=nm)
                        c0.set_budget(latency_ms=budgets[nm], model=nm, miss_rate=miss_rate)
                    moved = c0.status()["mapping"]["moves"]
                else:
                    pin_all(*p)
                got = _both(clients, xs, n, gaps)
                if p == "governed":
                    moves.append(c0.status()["mapping"]["moves"] - moved)
                for nm in SETS:
                    res[p][nm].append(got[nm])
                if p == "governed":
                    now = c0.status()["models"]
                    for nm in SETS:
                        for cause, x in now[nm]["misses"]["causes"].items():
                            causes[nm][cause] = causes[nm].get(cause, 0) + x
            print("block %d of %d done" % (b + 1, blocks), file=sys.stderr)
        for nm in SETS:
            c0.release(model=nm)
            c0.clear_budget(model=nm)
        for cl in clients.values():
            cl.close()
    return {"acc": acc, "tails": tails, "budgets": budgets, "res": res, "nice": nice, "miss_rate": miss_rate,
            "causes": causes, "moves": moves}


def report_real(r: Dict) -> str:
    rows = []
    for nm in SETS:
        b, acc = r["budgets"][nm], r["acc"][nm]
        for i, gov in enumerate(r["res"]["governed"][nm]):
            g = gov[SETTLE:]
            ms = [x for x, *_ in g]
            miss = float(np.mean([x > b for x in ms]))
            mean_acc = float(np.mean([acc[k - 1] for _, k, _ in gov]))
            ok = []
            for p, per in r["res"].items():
                if p == "governed" or p[0] > len(acc):
                    continue
                tr = per[nm][i][SETTLE:]
                m = float(np.mean([x > b for x, *_ in tr]))
                if m <= 0.01:
                    ok.append((acc[p[0] - 1], -np.median([x for x, *_ in tr]), p, m))
            best = max(ok) if ok else None
            where = {}
            for _, _, t in gov:
                where[t] = where.get(t, 0) + 1
            rows.append([nm, i + 1, "%.3f" % b, "%.3f / %.3f" % (np.median(ms), np.percentile(ms, 99)),
                         "%.2f%%" % (100 * miss), "%.2f" % mean_acc,
                         " ".join("%s %d%%" % (t, round(100 * c / len(gov))) for t, c in sorted(where.items())),
                         "k=%d %s (%.2f%%, %.2f)" % (best[2][0], best[2][1], 100 * best[3], best[0]) if best else "none",
                         "%+.2f" % (mean_acc - best[0]) if best else "-"])
    q = r.get("miss_rate")
    return ("Two sets in one daemon at niceness %d, two clients at once, batch 1, miss_rate %s (%s)\n"
            "tails with both running (p99 ms, the lowest over the targets): %s\n" % (
                r["nice"], "default" if q is None else "%g" % q, machine(), ", ".join(
                "%s k=1 %.3f, k=G %.3f" % (nm, t[1], t[max(t)]) for nm, t in r["tails"].items()))
            + table(["set", "block", "budget ms", "governed p50 / p99 ms", "misses", "accuracy", "targets",
                     "best static <= 1% misses", "vs best"], rows)
            + "\nthe governed phases' misses by cause (status): %s\n" % r["causes"]
            + "the threads' moves to another target in each governed block (status mapping.moves): %s\n" % r["moves"])


# ---------------------------------------------------------------------------- memory
def _pss_serving(names: Sequence[str], packed: bool, requests: int = 50) -> int:
    """The proportional set size (bytes) of a real ``dnnscale serve`` of ``names`` after
    ``requests`` batch-1 requests to each set, the sets packed or not (``DNNSCALE_PACK=0``).
    Not VmRSS: that counts a page of a file once per mapping, and every session of a packed
    set maps the set's weights again."""
    with running_daemon(list(names), profile_runs=1, env={"DNNSCALE_PACK": "1" if packed else "0"}) as d:
        with d.client(timeout_s=30) as c:
            st = c.status()
            for nm in names:
                shape = st.get("models", {nm: st})[nm]["model"]["input_shape"]
                x = np.zeros((1, shape[1], shape[2], shape[0]), np.uint8)
                for _ in range(requests):
                    c.infer(x, model=nm)
        return psutil.Process(d.proc.pid).memory_full_info().pss


def memory(reps: int = 2) -> str:
    """What a second set costs the daemon, beside its weight file: the sets packed (as
    served) and unpacked, alternating."""
    import os
    from models import zoo
    rows = []
    for rep in range(reps):
        for packed in (True, False):
            for first, second in (SETS, SETS[::-1]):
                one = _pss_serving([first], packed)
                two = _pss_serving([first, second], packed)
                w = os.path.getsize(os.path.join(zoo.resolve(second), "weights.bin"))
                rows.append([rep + 1, "packed" if packed else "unpacked", first, second, "%.1f" % (one / 2**20),
                             "%.1f" % (two / 2**20), "%.1f" % ((two - one) / 2**20), "%.1f" % (w / 2**20),
                             "%.2f" % ((two - one) / w)])
    return ("Proportional set size (PSS) of dnnscale serve after 50 requests per set (MiB; %s)\n" % machine()
            + table(["rep", "sets", "first set", "added set", "one set", "both", "added", "its weights.bin",
                     "added / weights"], rows) + "\n")


# ---------------------------------------------------------------------------- decision cost
def decision_cost(blocks: int = 6, n: int = 2000) -> str:
    """µs per decision on the simulated XU3's space (CIFAR levels): one governor alone, and
    two sets' governors through one Board, in alternating blocks (median and range)."""
    import time as _t
    from governor import Board, Budget, levels_from_manifest
    from models import manifest as mf, zoo
    from platforms.model import clock_table
    from platforms.sim import SimBoard
    from .scenarios import board_space, measure_profile, policy_from_profile
    levels = levels_from_manifest(mf.read(zoo.resolve(SETS[0])))
    b = SimBoard("sim-odroid-xu3")
    space = board_space(b, levels)
    prof = measure_profile(SimBoard("sim-odroid-xu3"), space, levels)
    rows = []
    for lat in (8.0, 4.0):
        def gov():
            g = policy_from_profile("dnnscale", space, levels, prof, targets=b.targets)
            g.set_budget(Budget(latency_ms=lat))
            return g
        alone, two, board = gov(), (gov(), gov()), Board(["a", "b"], clocks=clock_table(b.targets))   # as the daemon
        res = {"alone": [], "board": []}
        for _ in range(blocks):
            t0 = _t.perf_counter()
            for _ in range(n):
                alone.decide()
            res["alone"].append((_t.perf_counter() - t0) / n * 1e6)
            t0 = _t.perf_counter()
            for _ in range(n // 2):
                board.decide("a", two[0])
                board.decide("b", two[1])
            res["board"].append((_t.perf_counter() - t0) / n * 1e6)
        rows.append(["%.1f" % lat] + [spread(v, "%.1f") for v in res.values()]
                    + ["%.1fx" % (np.median(res["board"]) / np.median(res["alone"]))])
    return ("µs per decision, SIMULATED XU3 space, %d blocks of %d (%s)\n" % (blocks, n, machine())
            + table(["latency budget ms", "one governor alone", "two sets through one Board", "ratio"], rows) + "\n")


# ---------------------------------------------------------------------------- simulated
class Independent:
    """Governors that decide as if alone, each not knowing what the others left on the board:
    what two daemons (or a daemon without the board's rule) would do."""

    @staticmethod
    def decide(name, gov, deadline_ms=None, level=None, running_khz=None):
        return gov.decide(deadline_ms=deadline_ms, level=level)


def simulated(board_name: str, sets, mults: Sequence[float], n: int = 3000, gap_s: float = 0.005,
              seed: int = 0) -> List[Dict]:
    from governor import Board, Budget
    from platforms.model import clock_table
    from platforms.sim import SimBoard
    from .scenarios import Work, board_space, fastest_full_ms, measure_profile, policy_from_profile
    names = list(sets)
    rows = []
    for policy in ("joint", "independent"):
        board = SimBoard(board_name, seed=seed)
        clock = lambda: board.now
        parts = {}
        for nm, levels in sets.items():
            space = board_space(board, levels)
            profile = measure_profile(SimBoard(board_name), space, levels)
            gov = policy_from_profile("dnnscale", space, levels, profile, clock, board.targets)
            parts[nm] = (levels, gov, Work(board, levels, profile))
        for (nm, (levels, gov, _)), m in zip(parts.items(), mults):
            gov.set_budget(Budget(latency_ms=m * fastest_full_ms(board_name, levels)))
        rule = Board(names, clock=clock, clocks=clock_table(board.targets)) if policy == "joint" else Independent()
        freq_set: Dict[str, int] = {}
        writes = 0
        got = {nm: [] for nm in names}
        for i in range(n):
            nm = names[i % len(names)]
            levels, gov, work = parts[nm]
            d = rule.decide(nm, gov, running_khz=freq_set)
            c = d.config
            if c.freq_khz is not None and freq_set.get(c.target) != c.freq_khz:
                board.set_frequency(c.target, c.freq_khz)
                freq_set[c.target] = c.freq_khz
                writes += 1
            lat, en = board.run(work(c), c.target, idle_s=gap_s)
            gov.observe(c, lat, en, d.latency_limit_ms, ran_khz=board.frequency(c.target) if c.freq_khz else None)
            got[nm].append((lat * 1e3, en * 1e3, c.level, d.latency_limit_ms))
        acc = {nm: {l.level: l.accuracy for l in parts[nm][0]} for nm in names}
        for nm in names:
            tr = got[nm][SETTLE:]
            rows.append({"board": board_name, "policy": policy, "set": nm, "seed": seed, "budget_ms": tr[0][3],
                         "miss": float(np.mean([ms > lim for ms, _, _, lim in tr])),
                         "acc": float(np.mean([acc[nm][k] for _, _, k, _ in tr])),
                         "energy_mj": float(np.mean([e for _, e, _, _ in tr])), "writes": writes})
    return rows


def report_sim(rows: List[Dict]) -> str:
    """Per board, policy and set: the spread over seeds of misses, and the means."""
    groups: Dict = {}
    for r in rows:
        groups.setdefault((r["board"], r["policy"], r["set"]), []).append(r)
    out = []
    for (b, pol, nm), rs in groups.items():
        miss = [100 * r["miss"] for r in rs]
        out.append([b, pol, nm, "%.3f" % rs[0]["budget_ms"], "%.2f-%.2f%%" % (min(miss), max(miss)),
                    "%.2f" % np.mean([r["acc"] for r in rs]), "%.3f" % np.mean([r["energy_mj"] for r in rs]),
                    "%d" % np.mean([r["writes"] for r in rs])])
    text = ("SIMULATED boards: two sets, requests alternating, each its own budget; %d seeds (misses: their "
            "range; the rest: means)\n" % len({r["seed"] for r in rows})) + table(
        ["board", "policy", "set", "budget ms", "misses", "accuracy", "mJ/inference", "freq writes"], out)
    lines = []
    for b in sorted({r["board"] for r in rows}):
        ratios = []
        for seed in sorted({r["seed"] for r in rows}):
            e = {pol: sum(r["energy_mj"] for r in rows if r["board"] == b and r["policy"] == pol and r["seed"] == seed)
                 for pol in ("joint", "independent")}
            ratios.append(100 * (e["joint"] / e["independent"] - 1))
        lines.append("%s: joint energy vs independent, per seed: %s" % (b, ", ".join("%+.1f%%" % x for x in ratios)))
    return text + "\n" + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.multi", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=400, help="requests per set per phase")
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--at", type=float, default=0.5, help="each budget: this far from the k=1 tail to the k=G tail")
    p.add_argument("--gap-ms", type=float, nargs=2, default=[4.0, 6.0], help="each client's gap between requests")
    p.add_argument("--seeds", type=int, default=3, help="SIMULATED: runs with different noise")
    p.add_argument("--mults", type=float, nargs=2, default=[1.1, 1.25],
                   help="SIMULATED budgets: multiples of each set's fastest full-model latency")
    p.add_argument("--nice", type=int, default=None,
                   help="the daemon's niceness (default: the systemd unit's Nice=, as deployed; 0: the clients' own)")
    p.add_argument("--miss-rate", type=float, default=None, metavar="Q",
                   help="each set's budget asks this miss_rate (default: none, the governor's 0.01)")
    p.add_argument("--sim", action="store_true", help="the simulated boards too")
    p.add_argument("--sim-only", action="store_true")
    p.add_argument("--memory", action="store_true", help="only: what a second set adds to the daemon's memory")
    p.add_argument("--decide", action="store_true", help="only: what a decision costs with two sets on one Board")
    a = p.parse_args(argv)
    if a.memory:
        print(memory())
        return 0
    if a.decide:
        print(decision_cost())
        return 0
    from governor import levels_from_manifest
    from models import manifest as mf, zoo
    if a.sim or a.sim_only:
        sets = {nm: levels_from_manifest(mf.read(zoo.resolve(nm))) for nm in SETS}
        rows = []
        for b in ("sim-odroid-xu3", "sim-jetson-nano"):
            for seed in range(a.seeds):
                rows += simulated(b, sets, a.mults, seed=seed)
        print(report_sim(rows))
    if not a.sim_only:
        from .governor import unit_nice
        print(report_real(real(a.requests, a.blocks, a.at, a.gap_ms, unit_nice() if a.nice is None else a.nice,
                               a.miss_rate)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
