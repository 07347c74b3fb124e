"""The ``dnnscale`` command line. Each verb lives in a small function; heavy imports
(torch, onnxruntime) happen inside the verb that needs them, so ``--help`` is instant."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


class CliError(Exception):
    """One clear line for the user, exit status 2 (or ``code``)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _default_model() -> str:
    from models import zoo
    return zoo.default_path()


# ---------------------------------------------------------------------------- train / eval
def cmd_train(a: argparse.Namespace) -> int:
    try:
        from models import train as tr
        from models.arch import TINY, Arch
        from models import export
    except ImportError as e:
        raise CliError("training needs the train extra (%s): pip install torch==2.13.0 && "
                       "pip install 'dnnscale[train]'" % e)
    from models.cifar import DataError
    arch = TINY if a.size == "tiny" else Arch()
    cfg = tr.TrainConfig(groups=a.groups, epochs=a.epochs, seed=a.seed, batch=a.batch, lr=a.lr,
                         val=a.val, arch=arch)
    ckpt = a.checkpoint_dir or os.path.join(a.out, "checkpoints")
    try:
        trainer = tr.Trainer(a.data, ckpt, cfg, resume=a.resume, threads=a.threads)
        result = trainer.run()
    except (DataError, tr.TrainError) as e:
        raise CliError(str(e))
    manifest = export.export_group_set(result, a.out, cfg, name=a.name,
                                       command=" ".join(["dnnscale"] + sys.argv[1:]))
    print(export.format_table(manifest))
    print("model set written to %s" % a.out)
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from models import evaluate
    from models.cifar import DataError
    from models.modelset import ModelSetError
    try:
        rows = evaluate.evaluate(a.model or _default_model(), a.data, threads=a.threads,
                                 limit=a.limit, latency_runs=a.latency_runs)
    except (DataError, ModelSetError) as e:
        raise CliError(str(e))
    print(evaluate.format_rows(rows))
    return 0


# ---------------------------------------------------------------------------- platform
def format_platform(d) -> str:
    lines = ["platform: %s%s" % (d["platform"], " (SIMULATED)" if d.get("simulated") else "")]
    for name, t in d["targets"].items():
        f = t["freqs_khz"]
        freqs = "%d-%d MHz, %d steps" % (f[0] // 1000, f[-1] // 1000, len(f)) if f else "fixed frequency"
        cpus = "cpus %s" % ",".join(map(str, t["cpus"])) if t["cpus"] else t["kind"]
        lines.append("  target %-6s %-16s %-28s control: %s" % (name, cpus, freqs, t["method"]))
    gpu = d.get("gpu")
    if gpu and "gpu" not in d["targets"]:
        lines.append("  gpu (not an inference target) %d-%d MHz" % (gpu["freqs_khz"][0] // 1000,
                                                                  gpu["freqs_khz"][-1] // 1000))
    lines.append("  power rails: %s" % (", ".join("%s (%s)" % (r["name"], r["kind"]) for r in d["rails"]) or "none"))
    en = d.get("energy", {})
    lines.append("  energy per inference: %s" % ("from " + "+".join(en.get("rails", [])) if en.get("available")
                                                   else en.get("reason") or "not metered"))
    lines.append("  thermal zones: %s" % (", ".join(d["thermal"]) or "none"))
    dv = d.get("dvfs", {})
    lines.append("  dvfs: %s" % ("on" if dv.get("enabled") else "off (%s)" % dv.get("reason")))
    for w in d.get("warnings", []):
        lines.append("  warning: %s" % w)
    return "\n".join(lines)


def cmd_platform(a: argparse.Namespace) -> int:
    import json
    import platforms
    try:
        p = platforms.create(a.platform, root=a.sysfs_root)
    except (ValueError, platforms.PlatformError) as e:
        raise CliError(str(e))
    d = p.describe()
    temps = p.temperatures()
    d["temperatures_c"] = temps
    print(json.dumps(d, indent=1) if a.json else format_platform(d))
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dnnscale",
        description="Runtime for dynamic (group-incremental) DNNs on embedded boards. "
                    "`dnnscale serve` runs the daemon; the other verbs talk to it or build models.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    t = sub.add_parser("train", help="train a group-incremental model set on CIFAR-10 and export it",
                       description="Train group 1 alone, then each next group with the earlier ones "
                                   "frozen; export the per-group ONNX model set with its manifest. "
                                   "Checkpoints after every epoch; --resume continues a stopped run.")
    t.add_argument("--data", required=True, help="folder with the CIFAR-10 python batches "
                   "(cifar-10-batches-py, or a folder holding it)")
    t.add_argument("--out", required=True, help="where to write the model set")
    t.add_argument("--groups", type=int, default=4, help="number of groups G (default 4)")
    t.add_argument("--epochs", type=int, default=30, help="epochs per group (default 30)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--val", type=int, default=2500,
                   help="training images held out to choose each k's head (default 2500)")
    t.add_argument("--size", choices=("alexnet", "tiny"), default="alexnet",
                   help="column width: the shipped AlexNet-style size, or a tiny one for tests")
    t.add_argument("--name", default=None, help="model set name (default: the --out folder name)")
    t.add_argument("--checkpoint-dir", default=None, help="default: OUT/checkpoints")
    t.add_argument("--resume", action="store_true", help="continue the run in the checkpoint folder")
    t.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="accuracy, confidence, MACs, params and latency per k",
                       description="Evaluate a model set on the CIFAR-10 test batch, for every k.")
    e.add_argument("--model", default=None, help="model set folder (default: the shipped model)")
    e.add_argument("--data", required=True, help="folder with the CIFAR-10 python batches")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    e.add_argument("--latency-runs", type=int, default=200, help="batch-1 runs timed per k")
    e.set_defaults(func=cmd_eval)
    pl = sub.add_parser("platform", help="what dnnscale sees on this board",
                        description="Targets with CPUs and frequencies, GPU, power rails, thermal zones.")
    pl.add_argument("--platform", default=None, help="platform name (default: detect); one of "
                    "odroid-xu3, jetson-nano, generic, sim-odroid-xu3, sim-jetson-nano")
    pl.add_argument("--sysfs-root", default="/", help="root of the sysfs tree (a fake tree in tests)")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.set_defaults(func=cmd_platform)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        print("dnnscale %s: error: %s" % (args.verb, e), file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("dnnscale %s: interrupted" % args.verb, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
