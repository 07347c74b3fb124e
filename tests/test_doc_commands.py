"""Every `dnnscale ...` command in README.md, docs/ and examples/README.md, as written:
each one parses (no unknown flag, no missing argument), and those that need no board, no
service and no training data run against a real `dnnscale serve` started as a user starts
it (no flags; the config from $DNNSCALE_CONFIG, per-user state and sockets)."""
from __future__ import annotations

import contextlib
import glob
import os
import re
import shlex
import subprocess
import time
from typing import Dict

import pytest

from tests.daemon_harness import ROOT, dnnscale_cmd

DOCS = ["README.md", "examples/README.md"] + sorted(os.path.relpath(p, ROOT) for p in
                                                     glob.glob(os.path.join(ROOT, "docs", "*.md")))
PLACEHOLDER = re.compile(r"…|\.\.\.|\[|\]|<|>|\\$|\b[A-Z]{1,5}\b")
# Run against the live daemon, in this order (`top` is full-screen: its --once form).
RUN = ("platform", "status", "budget", "pin", "release", "infer", "reload", "top")


def doc_commands():
    """command -> the file it is in (code blocks and inline code; `sudo` dropped), and the
    inline ones that lack a required argument: a verb or flag named in prose ("`dnnscale
    infer` scales them", "`dnnscale train --group-widths ...`"), not a command to type."""
    from daemon.cli import build_parser
    out: Dict[str, str] = {}
    mentions = set()
    for rel in DOCS:
        text = open(os.path.join(ROOT, rel)).read()
        blocks = [l for b in re.findall(r"```\w*\n(.*?)```", text, re.S) for l in b.splitlines()]
        inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for lines, prose in ((blocks, False), (inline, True)):
            for line in lines:
                for part in re.split(r"&&|;|\|", line):
                    part = re.sub(r"^sudo\s+", "", part.strip()).split(" # ")[0].split("  #")[0].strip()
                    if not part.startswith("dnnscale "):
                        continue
                    out.setdefault(part, rel)
                    if prose and _missing_required(build_parser(), part):
                        mentions.add(part)
    return out, mentions


def _missing_required(parser, cmd: str) -> bool:
    import contextlib
    import io
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(shlex.split(cmd)[1:])
    except SystemExit:
        return "arguments are required" in err.getvalue()
    return False


COMMANDS, MENTIONS = doc_commands()


def test_the_docs_name_commands():
    assert len(COMMANDS) > 20 and "dnnscale status" in COMMANDS


@pytest.mark.parametrize("cmd", sorted(c for c in COMMANDS if not PLACEHOLDER.search(c) and c not in MENTIONS))
def test_every_documented_command_parses(cmd):
    from daemon.cli import build_parser
    try:
        build_parser().parse_args(shlex.split(cmd)[1:])
    except SystemExit as e:
        assert e.code == 0, "%s (in %s) does not parse" % (cmd, COMMANDS[cmd])


@contextlib.contextmanager
def users_serve(home, argv=("serve",)):
    """`dnnscale serve` as a user runs it (``argv`` as written): per-user state and sockets
    ($XDG_RUNTIME_DIR/dnnscale). Yields the clients' environment once `dnnscale status`
    answers in it."""
    cfg = home / "config.yaml"
    cfg.write_text("threads: 1\nprofile_runs: 1\n")
    env = dict(os.environ, HOME=str(home), XDG_RUNTIME_DIR=str(home), DNNSCALE_CONFIG=str(cfg), PYTHONPATH=ROOT)
    for v in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "DNNSCALE_SYSTEM", "NOTIFY_SOCKET", "XDG_STATE_HOME"):
        env.pop(v, None)
    log = open(home / "serve.log", "w")
    proc = subprocess.Popen(dnnscale_cmd() + list(argv), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.time() + 180
        while subprocess.run(dnnscale_cmd() + ["status"], cwd=ROOT, env=env, capture_output=True).returncode:
            assert proc.poll() is None and time.time() < end, open(home / "serve.log").read()
            time.sleep(0.5)
        yield env
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


@pytest.fixture(scope="module")
def user_env(tmp_path_factory):
    with users_serve(tmp_path_factory.mktemp("home")) as env:
        yield env


def test_documented_client_commands_run_as_written(user_env):
    ran = []
    for verb in RUN:
        for cmd in sorted(c for c in COMMANDS if not PLACEHOLDER.search(c) and c.split()[1:2] == [verb] and c not in MENTIONS):
            argv = shlex.split(cmd)[1:] + (["--once"] if verb == "top" else [])
            if "--model" in argv:
                continue          # a set of a daemon serving several: their own test below
            if verb == "infer" and any("boot" in a or "trouser" in a for a in argv):
                continue          # the Fashion-MNIST set's images: its own test below
            if verb == "infer" and not all(os.path.exists(os.path.join(ROOT, a)) for a in argv[1:]
                                           if not a.startswith("-")):
                continue          # the reader's own photos ("dnnscale infer photo.png")
            r = subprocess.run(dnnscale_cmd() + argv, cwd=ROOT, env=user_env, capture_output=True, text=True,
                               timeout=120)
            assert r.returncode == 0, "%s (in %s): exit %d\n%s%s" % (cmd, COMMANDS[cmd], r.returncode, r.stdout,
                                                                    r.stderr)
            ran.append(cmd)
    assert {"dnnscale status", "dnnscale infer examples/cat.png examples/rocket.png", "dnnscale release"} <= set(ran)
    r = subprocess.run(dnnscale_cmd() + ["profile"], cwd=ROOT, env=user_env, capture_output=True, text=True,
                       timeout=120)                 # documented: refused while a daemon serves
    assert r.returncode == 2 and "stop it first" in r.stderr, r.stderr


def test_documented_commands_for_several_sets_run_as_written(tmp_path):
    """The client commands that name a set (`--model`), against `dnnscale serve --model
    cifar10-g4 --model fashion-mnist-g4` as README runs it."""
    serve = next(c for c in COMMANDS if c.startswith("dnnscale serve --model cifar10-g4 --model fashion-mnist-g4"))
    cmds = sorted(c for c in COMMANDS if not PLACEHOLDER.search(c) and c not in MENTIONS and c.split()[1:2] != ["serve"]
                  and "--model" in shlex.split(c))
    assert any(c.split()[1] == "budget" for c in cmds) and any(c.split()[1] == "infer" for c in cmds)
    with users_serve(tmp_path, shlex.split(serve)[1:]) as env:
        for cmd in cmds:
            r = subprocess.run(dnnscale_cmd() + shlex.split(cmd)[1:], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120)
            assert r.returncode == 0, "%s (in %s): exit %d\n%s%s" % (cmd, COMMANDS[cmd], r.returncode, r.stdout,
                                                                    r.stderr)
            if cmd.split()[1] == "infer":
                assert "trouser" in r.stdout


def test_readme_fashion_mnist_block(tmp_path):
    """README's two lines for the grayscale set, and the answers it prints."""
    block = re.search(r"```\n(dnnscale serve --model fashion-mnist-g4\n.*?)```",
                      open(os.path.join(ROOT, "README.md")).read(), re.S).group(1)
    serve, infer = [l for l in block.splitlines() if l.startswith("dnnscale ")]
    expected = [l[2:] for l in block.splitlines() if l.startswith("# ")]
    with users_serve(tmp_path, shlex.split(serve)[1:]) as env:
        r = subprocess.run(dnnscale_cmd() + shlex.split(infer)[1:], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert [l for l in r.stdout.splitlines() if l.startswith("examples/")] == expected
