"""One benchmark suite: ``python -m bench [--quick] [--model DIR] [--portfolio DIR]``.

Runs every benchmark in one process tree, prints the tables, and rewrites
docs/benchmarks.md (``--out`` to write elsewhere, ``--no-write`` to only print). Every
section says whether it was measured on this machine or comes from a simulated board.
Timings on a shared machine are noisy: the tables give medians and ratios from one run.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from typing import Callable, List, Optional, Tuple

from .common import ROOT, machine

SECTIONS = ("range", "tradeoff", "modelset", "memory", "switching", "kinds", "daemon", "reload", "hotpath",
            "governor")


def _levels(model_dir):
    from governor import levels_from_manifest
    from models import manifest as mf
    return levels_from_manifest(mf.read(model_dir))


def run(model_dir: str, portfolio_dir: Optional[str], quick: bool, plots_dir: Optional[str],
        only: Optional[List[str]] = None) -> List[Tuple[str, str]]:
    from . import daemon as bdaemon, dynamic_range, modelset as bms, reload as breload, switching
    runs = 60 if quick else 300
    done: dict = {}   # results the "kinds" section reuses (measured here if those sections were skipped)

    def once(key, fn):
        if key not in done:
            done[key] = fn()
        return done[key]

    mem = lambda: once("memory", lambda: switching.memory(model_dir, portfolio_dir))
    sw = lambda: once("switching", lambda: switching.run(model_dir, portfolio_dir, runs=runs // 3))
    sections: List[Tuple[str, Callable[[], str]]] = [
        ("range", lambda: dynamic_range.report(dynamic_range.run(model_dir, quick=quick))),
        ("tradeoff", lambda: dynamic_range.tradeoff_report(model_dir, plots_dir)),
        ("modelset", lambda: bms.report(bms.run(model_dir, runs=runs))),
        ("memory", lambda: switching.memory_report(mem())),
        ("switching", lambda: switching.report(sw())),
        ("kinds", lambda: switching.kinds_report(model_dir, portfolio_dir, mem(), sw())),
        ("daemon", lambda: bdaemon.report(bdaemon.run(model_dir, requests=200 if quick else 1000,
                                                      clients=(1, 4, 8, 16)))),
        ("reload", lambda: breload.report(breload.run(model_dir, rounds=1 if quick else 3,
                                                      steady_s=1.0 if quick else 4.0,
                                                      modes=("unchanged",) if quick else ("unchanged", "rewritten")),
                                          3)),
        ("hotpath", lambda: hotpath_section(model_dir, quick)),
        ("governor", lambda: governor_section(model_dir, quick, plots_dir)),
    ]
    out = []
    for name, fn in sections:
        if only and name not in only:
            continue
        t0 = time.time()
        print("== %s ..." % name, file=sys.stderr, flush=True)
        text = fn()
        print(text)
        out.append((name, text + "\n_(%s: %.0f s)_\n" % (name, time.time() - t0)))
    return out


def hotpath_section(model_dir: str, quick: bool) -> str:
    from . import hotpath
    try:
        return hotpath.report(hotpath.run(model_dir, requests=200 if quick else 1000, rounds=4 if quick else 10))
    except hotpath.BuildError as e:
        return "Not measured: bench/hotpath.c could not be built here (%s)." % str(e).splitlines()[0]


def governor_section(model_dir: str, quick: bool, plots_dir: Optional[str]) -> str:
    from . import governor as bgov, static as bstatic
    levels = _levels(model_dir)
    text = bgov.report(bgov.simulated(levels) + ([] if quick else bgov.measured(model_dir)))
    text += "\nAgainst the best static choice on this machine (`python -m bench.static`): the most " \
            "accurate pinned configuration whose measured miss rate at the budget is <= 1%%, beside what " \
            "the governor served at that budget.\n\n%s" % bstatic.report(
                bstatic.run(model_dir, requests=30 if quick else 300, load=not quick))
    text += "\n" + bgov.sweep_report(levels)
    text += "\n" + bgov.decision_cost(levels, n=1000 if quick else 5000) + "\n"
    png = bgov.plot(levels, os.path.join(plots_dir, "governor.png")) if plots_dir else None
    if png:
        text += "\n![latency against the budget and the chosen k](%s)\n" % os.path.relpath(png, os.path.join(ROOT, "docs"))
    return text


TITLES = {
    "range": "1. Dynamic range (the seed paper's central figure)",
    "tradeoff": "2. Accuracy against latency and energy (the trade-off picture)",
    "modelset": "3a. ModelSet: latency per level, memory, size on disk",
    "memory": "3b. Memory: group set vs separate models vs the DNNShifter portfolio",
    "switching": "4. Switching cost",
    "kinds": "4b. The two kinds of dynamic DNN side by side (group set vs DNNShifter-style portfolio)",
    "daemon": "5. The daemon: overhead and throughput",
    "reload": "5a. Requests around reloads",
    "hotpath": "5b. A compiled request path (prototype)",
    "governor": "6. The governor against its baselines",
}


def _old_sections(path: str) -> dict:
    """The sections of an earlier docs/benchmarks.md, by name (to keep those not rerun)."""
    if not os.path.exists(path):
        return {}
    by_title = {v: k for k, v in TITLES.items()}
    out, name = {}, None
    for line in open(path).read().split("\n"):
        if line.startswith("## ") and line[3:] in by_title:
            name = by_title[line[3:]]
            out[name] = []
        elif name:
            out[name].append(line)
    return {k: "\n".join(v).strip("\n") for k, v in out.items()}


def write_doc(path: str, sections: List[Tuple[str, str]], command: str) -> None:
    """Write every section in the order of SECTIONS; with ``--only``, the sections not rerun
    are kept from the earlier file, each with the command and date it came from."""
    today = datetime.date.today().isoformat()
    new = {name: text + "\n_(`%s`, %s)_" % (command, today) for name, text in sections}
    kept = {k: v for k, v in _old_sections(path).items() if k not in new}
    head = ["# Benchmarks", "",
            "Written by `python -m bench` (every section ends with the command and date it came from). "
            "Machine of the latest run: %s. This VM has been given hosts of different speed from one "
            "session to the next (the same k=1 run took 162 µs in one and 516 in the next): a section kept "
            "from an earlier run may come from another host; the sections that time round trips name "
            "theirs in their first line." % machine(), "",
            "Every number in a section was produced by its command in one run; rerun it to reproduce. "
            "Timings on this shared 2-core VM are noisy: compare the ratios within a table, not absolute "
            "times across sections or runs. Sections that use the simulated XU3/Nano say so; their constants "
            "and sources are in platforms/sim.py and docs/platforms.md. A `--quick` section had fewer "
            "repetitions.", ""]
    body = []
    for name in SECTIONS:
        text = new.get(name, kept.get(name))
        if text is not None:
            body += ["## " + TITLES[name], "", text, ""]
    with open(path, "w") as f:
        f.write("\n".join(head + body))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few-minute run with fewer repetitions")
    p.add_argument("--model", default=None, help="group model set (default: the shipped one)")
    p.add_argument("--portfolio", default=None, help="portfolio set (default: the shipped one, if any)")
    p.add_argument("--only", nargs="*", choices=SECTIONS,
                   help="run only these sections; the others in --out are kept as they were")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    from models import zoo
    model = a.model or zoo.default_path()
    portfolio = a.portfolio
    if portfolio is None and "cifar10-portfolio" in zoo.available():
        portfolio = zoo.path("cifar10-portfolio")
    plots = None if a.no_write else os.path.join(os.path.dirname(os.path.abspath(a.out)), "img")
    if plots:
        os.makedirs(plots, exist_ok=True)
    sections = run(model, portfolio, a.quick, plots, a.only)
    if not a.no_write:
        command = "python -m bench" + (" --quick" if a.quick else "") + (" --only " + " ".join(a.only) if a.only else "")
        write_doc(a.out, sections, command)
        print("wrote %s" % a.out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
