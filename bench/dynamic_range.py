"""Dynamic range (the seed paper's central figure) and the accuracy trade-off.

Dynamic range = max/min of latency (and energy) per inference over the reachable
configurations, for (a) the group count alone, (b) groups + task mapping, (c) groups +
mapping + DVFS. Measured on this machine where the axis exists (groups x thread mapping;
no DVFS, no energy sensor here), and on the simulated XU3 and Nano for all three.
Published (Xun et al., MLCAD 2019): 2.73x time / 2.36x energy wider than earlier dynamic
DNNs; 41.6x / 10.6x with task mapping and DVFS.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np

from .common import machine, table

PAPER = {"with mapping + DVFS": (41.6, 10.6), "vs earlier dynamic DNNs": (2.73, 2.36)}


def measured(model_dir: str, runs: int = 100) -> List[Dict]:
    """Median batch-1 latency of every (k, mapping) on this machine (generic platform)."""
    import platforms
    from daemon.runtime import Builder
    from models import ModelSet
    from models.evaluate import timings
    plat = platforms.create("generic")
    ms = ModelSet.load(model_dir, lanes=Builder(plat).lanes())      # each lane its own thread count, as served
    x = np.zeros((1,) + ms.input_shape, np.float32)
    rows = []
    try:
        for target in [n for n, t in plat.targets.items() if not t.is_split]:   # splits: bench/columns.py
            plat.pin(target)
            for k in range(1, ms.groups + 1):
                t = timings(lambda: ms.run(k, x, target), runs)
                rows.append({"k": k, "target": target, "freq_khz": None, "latency_ms": float(np.median(t)) * 1e3,
                             "energy_mj": None, "accuracy": ms.level(k).get("accuracy")})
    finally:
        plat.stop()
    return rows


def simulated(model_dir: str) -> Dict[str, List[Dict]]:
    from models import manifest as mf
    from platforms.sim import SimBoard
    from governor import Config, levels_from_manifest
    from .scenarios import Work, board_space, measure_profile
    m = mf.read(model_dir)
    levels = levels_from_manifest(m)
    out = {}
    for name in ("sim-odroid-xu3", "sim-jetson-nano"):
        b = SimBoard(name)
        work = Work(b, levels, measure_profile(SimBoard(name), board_space(b, levels), levels))
        rows = []
        for lv in m["levels"]:
            for t, st in b.targets.items():
                if st.is_split and lv["level"] < len(st.parts):
                    continue
                for f in st.freqs_khz:
                    w = work(Config(lv["level"], t, f)) if st.is_split else lv["macs"]
                    if st.is_split and w == lv["macs"]:
                        continue
                    lat, en = b.predict(w, t, f)
                    rows.append({"k": lv["level"], "target": t, "freq_khz": f, "latency_ms": lat * 1e3,
                                 "energy_mj": en * 1e3, "accuracy": lv.get("accuracy"), "split": st.is_split})
        out[name] = rows
    return out


def _range(rows, key) -> Optional[float]:
    v = [r[key] for r in rows if r[key] is not None]
    return max(v) / min(v) if v else None


def axes(rows: List[Dict]) -> Dict[str, List[Dict]]:
    """(a) the fastest target at its top frequency, (b) every target at its top frequency,
    (c) everything but the splits, (d) with the splits (the columns at once on every
    processor)."""
    splits = [r for r in rows if r.get("split")]
    rows = [r for r in rows if not r.get("split")]
    fmax = {t: max(r["freq_khz"] for r in rows if r["target"] == t) for t in {r["target"] for r in rows}}
    at_max = [r for r in rows if r["freq_khz"] == fmax[r["target"]]]
    top = max(r["k"] for r in rows)
    fastest = min((r for r in at_max if r["k"] == top), key=lambda r: r["latency_ms"])["target"]
    return {"(a) groups alone": [r for r in at_max if r["target"] == fastest],
            "(b) groups + mapping": at_max, "(c) + DVFS": rows, "(d) + splits (columns in parallel)": rows + splits}


def run(model_dir: str, quick: bool = False) -> Dict:
    real = measured(model_dir, runs=40 if quick else 200)
    fastest = min((r for r in real if r["k"] == max(x["k"] for x in real)), key=lambda r: r["latency_ms"])["target"]
    res = {"machine": machine(), "boards": {}}
    res["boards"]["this machine (measured)"] = {
        "(a) groups alone": [r for r in real if r["target"] == fastest],
        "(b) groups + mapping": real, "(c) + DVFS": None}
    res["splits"] = []
    for name, rows in simulated(model_dir).items():
        res["boards"][name + " (SIMULATED)"] = axes(rows)
        res["splits"] += split_rows(name, rows)
    return res


def split_rows(board: str, rows: List[Dict]) -> List[List]:
    """Per k, the fastest configuration on one processor against the fastest split."""
    out = []
    for k in sorted({r["k"] for r in rows if r.get("split")}):
        one = min((r for r in rows if r["k"] == k and not r.get("split")), key=lambda r: r["latency_ms"])
        s = min((r for r in rows if r["k"] == k and r.get("split")), key=lambda r: r["latency_ms"])
        out.append([board + " (SIMULATED)", k, "%s %.3f ms, %.2f mJ" % (one["target"], one["latency_ms"], one["energy_mj"]),
                    "%s %.3f ms, %.2f mJ" % (s["target"], s["latency_ms"], s["energy_mj"]),
                    "%.2fx" % (s["latency_ms"] / one["latency_ms"]), "%.2fx" % (s["energy_mj"] / one["energy_mj"])])
    return out


def report(r: Dict) -> str:
    rows = []
    for board, ax in r["boards"].items():
        for name, sel in ax.items():
            if sel is None:
                rows.append([board, name, "n/a (no DVFS here)", "n/a", "-"])
                continue
            t, e = _range(sel, "latency_ms"), _range(sel, "energy_mj")
            rows.append([board, name, "%.2fx" % t, "n/a (no sensor)" if e is None else "%.2fx" % e, len(sel)])
    for claim, (t, e) in PAPER.items():
        rows.append(["Xun et al. 2019 (published)", claim, "%.2fx" % t, "%.2fx" % e, "-"])
    out = ("Machine: %s. Dynamic range = max/min over the configurations of each axis.\n\n" % r["machine"] +
           table(["board", "axis", "latency range", "energy range", "configurations"], rows))
    if r.get("splits"):
        out += ("\n\nThe fastest configuration of each k on one processor (any frequency) against the fastest "
                "split (the group columns at once on every processor, bench/columns.py measures it on this "
                "machine):\n\n" + table(["board", "k", "fastest on one processor", "fastest split",
                                          "latency ratio", "energy ratio"], r["splits"]))
    return out


def pareto(rows: List[Dict], key: str) -> List[Dict]:
    """Configurations no other beats on both accuracy and ``key`` (lower is better)."""
    pts = sorted((r for r in rows if r[key] is not None and r["accuracy"] is not None),
                 key=lambda r: (r[key], -r["accuracy"]))
    front, best = [], -1.0
    for r in pts:
        if r["accuracy"] > best:
            front.append(r)
            best = r["accuracy"]
    return front


def tradeoff_report(model_dir: str, plots_dir: Optional[str]) -> str:
    sims = simulated(model_dir)
    lines = []
    for name, rows in sims.items():
        for key, unit in (("latency_ms", "ms"), ("energy_mj", "mJ")):
            front = pareto(rows, key)
            lines.append("**%s (SIMULATED): Pareto front, accuracy against %s**\n" % (name, key.split("_")[0]))
            lines.append(table(["k", "target", "MHz", "%s %s" % (key.split("_")[0], unit), "top-1 %"],
                               [[p["k"], p["target"], p["freq_khz"] // 1000, p[key], p["accuracy"]] for p in front]))
            lines.append("")
    if plots_dir:
        png = _plot(sims, os.path.join(plots_dir, "tradeoff.png"))
        if png:
            lines.append("![accuracy against latency and energy](%s)\n" % os.path.relpath(
                png, os.path.join(os.path.dirname(plots_dir))))
    return "\n".join(lines)


def _plot(sims: Dict[str, List[Dict]], path: str) -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes_ = plt.subplots(2, len(sims), figsize=(6 * len(sims), 7))
    for j, (name, rows) in enumerate(sims.items()):
        for i, key in enumerate(("latency_ms", "energy_mj")):
            ax = axes_[i, j]
            for t in sorted({r["target"] for r in rows}):
                sel = [r for r in rows if r["target"] == t]
                ax.scatter([r[key] for r in sel], [r["accuracy"] for r in sel], s=8, label=t, alpha=0.6)
            front = pareto(rows, key)
            ax.step([p[key] for p in front], [p["accuracy"] for p in front], "k-", where="post", lw=1,
                    label="Pareto front")
            ax.set_xscale("log")
            ax.set_xlabel(key.replace("_", " "))
            ax.set_ylabel("top-1 %")
            ax.set_title("%s (SIMULATED)" % name, fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
