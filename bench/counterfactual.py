"""Issue 35's targets judged offline, on runs that ``bench.deadlines`` saved: COUNTERFACTUAL.

``python -m bench.deadlines --real-only --static-samples 2 --save RUN.json`` keeps every request
of every static configuration, pinned, under the burst pattern, twice (a sample before the
governor, one after), and the live governor's own requests. This replays policies on the
second sample as if each configuration's latency at request i were its pinned run's at
request i there, and judges each by issue 35's two targets against that sample's best static
(the most accurate with <= 1% misses):

* **the governor, live**: its own run, between the samples (judged against the second, so that
  every row has the same reference);
* **the governor, counterfactual**: the real ``Governor`` (``Params()``, or with ``--set``)
  driven request by request on the second sample, after seeing every static of the first
  pinned, as the live one does; the load signal reports the bursts ``LAG`` requests late;
  the first runs after a move to another target and after a move down a level cost what the
  live governor's cost in the same files (:func:`first_run_costs`);
* **the first sample's best static**, run on the second (``bench.deadlines``' replay);
* **the first sample's best schedule**: one static configuration per phase (the quiet first
  third, the bursts, the gaps between them, the quiet last third), the most accurate with
  <= 1% misses on the first sample, run on the second: a policy that knows when the load
  comes and what each configuration did under it a minute before;
* **the oracle**: that schedule chosen on the second sample itself (hindsight): the accuracy
  a policy that knew the load's schedule and each configuration's misses in every phase
  could have had there; its gap to the best static is what adapting to the load can gain
  on this pattern.

Counterfactual, not measured: the statics ran one after another, so request i of two
configurations met different moments of the host; the governor's row is compared with its
live row for that reason.

    python -m bench.counterfactual SAVED [SAVED ...] [--set PARAM=VALUE [--set ...]]

``--set``: a second counterfactual governor with those ``governor.Params`` changed, on the same
requests (a paired comparison of a change without the live runs' noise between the two).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .common import table
from .deadlines import SETTLE, both_targets, busy_at, kept, load_saved, middle_third, replay

LAG = 4          # requests the load signal reports a change late: half its 30 ms window at ~4 ms a request
LAG_S = 0.03     # ... the window, as the governor is told (set_load's lag_s)
PHASES = ("quiet first third", "bursts", "gaps", "quiet last third")


def phase_of(i: int, n: int, burst: int) -> int:
    """Request ``i``'s phase (an index of ``PHASES``)."""
    if not middle_third(i, n):
        return 0 if i < n // 3 else 3
    return 1 if busy_at(i, n, burst) else 2


def targets_of(run: Dict) -> Dict[str, Dict]:
    """Each target's CPUs and kind, as saved; for runs saved before they were, from the names
    the platform gives (platforms/discover.py): ``cpu`` all CPUs, ``cpu:N`` its first N, a
    split ``cpuA+cpuB`` its lanes' CPUs."""
    if run.get("targets"):
        return run["targets"]
    names = {t for _, t in run["statics"]}
    cpus = sorted({int(p[3:]) for n in names if "+" in n for p in n.split("+")})
    if not cpus:
        cpus = list(range(max([int(n.split(":")[1]) for n in names if ":" in n] or [0]) + 1))
    out = {}
    for n in names:
        if "+" in n:
            out[n] = {"cpus": [int(p[3:]) for p in n.split("+")], "kind": "split"}
        elif ":" in n:
            out[n] = {"cpus": cpus[:int(n.split(":")[1])], "kind": "cpu"}
        elif n == "cpu":
            out[n] = {"cpus": cpus, "kind": "cpu"}
        else:
            raise ValueError("target %s: its CPUs were not saved and its name does not tell them" % n)
    return out


def first_run_costs(runs: Sequence[Dict], window: int = 15) -> Dict[str, List[float]]:
    """What the live governor's first runs cost, against the pinned run at the same requests:
    per run of the governor, its latency over the median of the same configuration's first
    sample within ``window`` requests of it, the median over every such run, divided by the
    median over the runs that changed nothing (the drift between the live run and the
    sample). ``move``: the first three runs after a move to another target; ``down``: the
    first run after a move down a level on the same target; ``up``: after a move up (the
    daemon rehearses it while idle). A cost below 1 counts as 1."""
    move: List[List[float]] = [[], [], []]
    down, up, steady = [], [], []
    for r in runs:
        for g in r["governed"]:
            tr = g["trace"]
            since = None
            for i in range(1, len(tr)):
                ref = r["statics"].get((tr[i]["k"], tr[i]["target"]))
                if not ref:
                    continue
                q = tr[i]["ms"] / float(np.median([x["ms"] for x in ref[max(0, i - window):i + window]]))
                a, b = tr[i - 1], tr[i]
                if b["target"] != a["target"]:
                    since = 0
                elif since is not None and since < 2:
                    since += 1
                else:
                    since = None
                    (up if b["k"] > a["k"] else down if b["k"] < a["k"] else steady).append(q)
                if since is not None:
                    move[since].append(q)
    base = float(np.median(steady)) if steady else 1.0
    cost = lambda v: max(1.0, float(np.median(v)) / base) if v else 1.0      # noqa: E731
    return {"move": [cost(v) for v in move], "down": [cost(down)], "up": [cost(up)]}


def governor_for(run: Dict, params=None):
    """The real Governor over the run's configurations, profiled from the first sample's quiet
    first third (each static's median there), its clock a list to advance."""
    from governor import Governor, build_space, levels_from_manifest
    from governor.profile import Profile, Sample
    from governor.space import Config
    from models import manifest as mf, zoo
    manifest = mf.read(zoo.resolve(run["model"]))
    levels = levels_from_manifest(manifest)
    if [l.accuracy for l in levels] != list(run["acc"]):
        raise ValueError("model %s's accuracies %s are not the run's %s: another model set than the one measured"
                         % (run["model"], [l.accuracy for l in levels], run["acc"]))
    targets = targets_of(run)
    splits = {n: len(t["cpus"]) for n, t in targets.items() if t["kind"] == "split"}
    space = [c for c in build_space(levels, {n: [] for n in targets}, splits) if (c.level, c.target) in run["statics"]]
    n = len(next(iter(run["statics"].values())))
    samples = [Sample(Config(k, t, None), float(np.median([x["ms"] for x in v[SETTLE:n // 3]])) / 1e3)
               for (k, t), v in run["statics"].items()]
    clock = [0.0]
    gov = Governor(space, levels, Profile.fit(samples, levels), clock=lambda: clock[0], params=params,
                   splits=list(splits), processors={n: t["cpus"] for n, t in targets.items()})
    return gov, clock


def drive(gov, clock: List[float], sample: Dict, burst: int, gap_ms: float,
          costs: Dict[str, List[float]]) -> List[Tuple[float, int, str]]:
    """The governor through ``sample``'s requests: (latency, level, target) per request."""
    from governor.space import Config
    n = len(next(iter(sample.values())))
    out: List[Tuple[float, int, str]] = []
    prev: Optional[Config] = None
    moved = 0
    for i in range(n):
        loaded = i >= LAG and busy_at(i - LAG, n, burst)
        gov.set_load({t: loaded for t in gov.targets}, LAG_S)
        d = gov.decide()
        c = d.config
        ms = sample[(c.level, c.target)][i]["ms"]
        if prev is not None and c.target != prev.target:
            moved = len(costs["move"])
        if moved:
            ms *= costs["move"][len(costs["move"]) - moved]
        elif prev is not None and c.level != prev.level:
            ms *= costs["down" if c.level < prev.level else "up"][0]
        gov.observe(c, ms / 1e3, None, d.latency_limit_ms, learn=not moved)   # the daemon does not learn a move's
        moved = max(0, moved - 1)
        clock[0] += (ms + gap_ms) / 1e3
        prev = c
        out.append((ms, c.level, c.target))
    return out


def counterfactual_governor(run: Dict, costs: Dict, params=None) -> List[List[Tuple]]:
    """Per budget of the run, the counterfactual governor's requests on the second sample,
    after every static of the first pinned (as the live governor saw them)."""
    from governor import Budget
    gov, clock = governor_for(run, params)
    gap_ms = run["gap_ms"]
    first, second = run["statics"], run["statics_again"][0]
    for k, t in first:
        gov.pin(level=k, target=t)
        drive(gov, clock, first, run["burst"], gap_ms, costs)
    gov.pin()
    out = []
    for g in run["governed"]:
        gov.set_budget(Budget(latency_ms=g["budget_ms"], miss_rate=g.get("asked")))
        out.append(drive(gov, clock, second, run["burst"], gap_ms, costs))
    gov.clear_budget()
    return out


def phase_misses(sample: Dict, budget_ms: float, burst: int, among: Sequence[Tuple]):
    """Per configuration of ``among`` (rows) and phase (columns), its misses on ``sample``
    (after SETTLE); the requests counted; each phase's share of the requests."""
    n = len(next(iter(sample.values())))
    ph = np.array([phase_of(i, n, burst) for i in range(n)])
    counted = np.arange(n) >= SETTLE
    miss = np.array([[np.sum((np.array([x["ms"] for x in sample[c]]) > budget_ms) & counted & (ph == p))
                      for p in range(len(PHASES))] for c in among])
    return miss, int(counted.sum()), np.array([np.mean(ph == p) for p in range(len(PHASES))])


def schedules(sample: Dict, acc: Sequence[float], budget_ms: float, burst: int, among: Sequence[Tuple]):
    """Per schedule of one configuration of ``among`` per phase, its miss rate (after SETTLE)
    and mean accuracy on ``sample``: two arrays over ``itertools.product(among, repeat=4)``."""
    miss, counted, share = phase_misses(sample, budget_ms, burst, among)
    a = np.array([acc[k - 1] for k, _ in among])
    m_tot = sum(np.ix_(*[miss[:, p] for p in range(len(PHASES))]))      # broadcast over the product
    a_tot = sum(np.ix_(*[a * share[p] for p in range(len(PHASES))]))
    return m_tot.ravel() / counted, a_tot.ravel()


def run_schedule(sample: Dict, acc: Sequence[float], budget_ms: float, burst: int,
                 schedule: Sequence[Tuple]) -> Tuple[float, float]:
    """The miss rate and mean accuracy on ``sample`` of ``schedule``: a configuration per phase."""
    miss, counted, share = phase_misses(sample, budget_ms, burst, schedule)
    return (float(sum(miss[p, p] for p in range(len(PHASES)))) / counted,
            float(sum(acc[k - 1] * share[p] for p, (k, _) in enumerate(schedule))))


def best_schedule(sample: Dict, acc, budget_ms: float, burst: int, among) -> Optional[Tuple[int, ...]]:
    """The most accurate schedule with <= 1% misses on ``sample`` (None: none): an index of
    ``among`` per phase."""
    m, a = schedules(sample, acc, budget_ms, burst, among)
    ok = np.flatnonzero(m <= 0.01)
    if not len(ok):
        return None
    return tuple(int(i) for i in np.unravel_index(int(ok[np.argmax(a[ok])]), (len(among),) * len(PHASES)))


def judge(runs: Sequence[Dict], params=None, costs: Optional[Dict] = None) -> Dict[str, List[List[Dict]]]:
    """Per policy, per budget index, per run: {"miss", "gap"} against the second sample's best
    static (``gap`` None where none kept within 1%); ``costs``: :func:`first_run_costs` of the
    runs (measured here where not given)."""
    costs = first_run_costs(runs) if costs is None else costs
    pols = ["live", "governor"] + (["changed"] if params is not None else []) + ["static", "schedule", "oracle"]
    out: Dict[str, List[List[Dict]]] = {p: [] for p in pols}
    for r in runs:
        if not r.get("statics_again"):
            raise ValueError("a run has one sample of the statics: the counterfactual needs --static-samples 2")
        acc, first, second = r["acc"], r["statics"], r["statics_again"][0]
        among = [c for c in first if c in second]
        replays = {"governor": counterfactual_governor(r, costs)}
        if params is not None:
            replays["changed"] = counterfactual_governor(r, costs, params)
        for j, g in enumerate(r["governed"]):
            b = g["budget_ms"]
            miss_of = lambda st: float(np.mean([x["ms"] > b for x in st[SETTLE:]]))     # noqa: E731
            ref = max(kept(second, acc, miss_of), default=None)
            ref_acc = None if ref is None else ref[0]
            row = lambda m, a: {"miss": m, "gap": None if ref_acc is None else a - ref_acc}   # noqa: E731
            res = {"live": row(miss_of(g["trace"]), float(np.mean([acc[x["k"] - 1] for x in g["trace"]])))}
            for name, rep in replays.items():
                tr = rep[j]
                res[name] = row(float(np.mean([ms > b for ms, _, _ in tr[SETTLE:]])),
                                float(np.mean([acc[k - 1] for _, k, _ in tr])))
            res["static"] = replay(max(kept(first, acc, miss_of), default=None), second, acc, miss_of)
            for name, source in (("schedule", first), ("oracle", second)):
                s = best_schedule(source, acc, b, r["burst"], among)
                res[name] = None if s is None else row(*run_schedule(second, acc, b, r["burst"],
                                                                     [among[i] for i in s]))
            for p in pols:
                while len(out[p]) <= j:
                    out[p].append([])
                out[p][j].append(res[p])
    return out


NAMES = {"live": "the governor, live (its own run)",
         "governor": "the governor, counterfactual",
         "changed": "the governor, counterfactual, with %s",
         "static": "the first sample's best static",
         "schedule": "the first sample's best schedule per phase",
         "oracle": "the oracle: the best schedule per phase in hindsight"}


def report(runs: Sequence[Dict], at: Sequence[float], params=None, changed: str = "", host: str = "") -> str:
    costs = first_run_costs(runs)
    res = judge(runs, params, costs)
    per = lambda f: "%d (%s)" % (sum(f(j) for j in range(len(at))), ", ".join(str(f(j)) for j in range(len(at))))  # noqa: E731
    rows = []
    for p, by in res.items():
        cnt = lambda pred: per(lambda j: sum(1 for x in by[j] if x is not None and pred(x)))   # noqa: E731
        gaps = lambda j: [x["gap"] for x in by[j] if x is not None and x["gap"] is not None]    # noqa: E731
        rows.append([NAMES[p] % changed if p == "changed" else NAMES[p],
                     cnt(lambda x: both_targets(x["miss"], x["gap"])), cnt(lambda x: x["miss"] > 0.01),
                     cnt(lambda x: x["gap"] is not None and x["gap"] < -0.3),
                     ", ".join("%+.2f" % float(np.median(gaps(j))) if gaps(j) else "-" for j in range(len(at))),
                     ", ".join("%.2f" % (100 * float(np.median([x["miss"] for x in by[j] if x is not None])))
                               for j in range(len(at)))])
    pairs = sum(len(v) for v in res["live"])
    return "\n".join([
        "**COUNTERFACTUAL** (the second sample of %d saved run%s, %s): issue 35's targets, every policy against "
        "that sample's best static with <= 1%% misses; budgets at %s of the way k=1 → k=G; %d (run, budget) pairs. "
        "First-run costs from the live governor's runs: a move %s, a move down %s, a move up %s."
        % (len(runs), "s" if len(runs) > 1 else "", host, ", ".join("%.2f" % f for f in at), pairs,
           " / ".join("%.2fx" % c for c in costs["move"]), "%.2fx" % costs["down"][0], "%.2fx" % costs["up"][0]),
        "",
        table(["policy", "both targets met (per budget)", "over 1% misses", "more than 0.3 points below",
               "accuracy vs the best static, median", "misses %, median"], rows),
        ""])


def parse_set(items: Sequence[str]):
    """``--set PARAM=VALUE`` items as ``governor.Params`` (ValueError naming a wrong one)."""
    from governor import Params
    fields = {f.name: f for f in dataclasses.fields(Params)}
    kw = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or name not in fields:
            raise ValueError("%s: not PARAM=VALUE with a governor parameter (%s)" % (item, ", ".join(fields)))
        default = getattr(Params(), name)
        try:
            kw[name] = (value.lower() in ("1", "true", "yes")) if isinstance(default, bool) else type(default)(value)
        except ValueError:
            raise ValueError("%s: %s takes a %s" % (item, name, type(default).__name__)) from None
    return Params(**kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.counterfactual", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("saved", nargs="+", metavar="SAVED",
                   help="files that python -m bench.deadlines --static-samples 2 --save wrote")
    p.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                   help="also replay a governor with this governor.Params field changed (e.g. up_patience=10; "
                        "repeat for several)")
    a = p.parse_args(argv)
    try:
        params = parse_set(a.set) if a.set else None
        runs, (at, _, _, _), host = load_saved(a.saved)
        print(report(runs, at, params, " ".join(a.set), host))
    except (OSError, ValueError) as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
