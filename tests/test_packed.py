"""A set's CPU sessions share one optimised copy of its weights (models/packed.py): the same
answers as the set's own files, one file the size of the set's weights that every session
maps, made again where it was removed, cleaned up after, and a set that cannot be packed
still loads."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from models import ModelSet, zoo
from models.modelset import _version
from models.packed import PREFIX, WEIGHTS, Pack, session_files

CIFAR = "cifar10-g4"


@pytest.fixture(scope="module")
def sets():
    d = zoo.resolve(CIFAR)
    packed = ModelSet.load(d, threads=2, lanes={"cpu:1": 1}, pack=True)
    plain = ModelSet.load(d, threads=2, lanes={"cpu:1": 1}, pack=False)
    yield packed, plain
    packed.close()
    plain.close()


def test_a_packed_set_answers_as_its_own_files(sets):
    packed, plain = sets
    assert packed._pack is not None and plain.packing == "off"
    x = np.random.default_rng(0).random((5,) + packed.input_shape, dtype=np.float32)
    for k in range(1, packed.groups + 1):
        for target in (None, "cpu:1"):
            assert np.abs(packed.run(k, x, target) - plain.run(k, x, target)).max() <= 1e-5
    want = plain.run(4, x)
    assert np.abs(packed.run_split(4, x, [(1, 2), (3, 4)]) - want).max() <= 1e-5
    logits, groups = packed.run_anytime(x)
    assert np.abs(logits - want).max() <= 1e-5 and groups.tolist() == [4] * 5


def test_every_session_maps_one_file_the_size_of_the_weights(sets):
    packed, _ = sets
    x = np.zeros((1,) + packed.input_shape, np.float32)
    packed.run_split(4, x, [(1, 2), (3, 4)])
    packed.run_anytime(x)
    files = sorted(os.listdir(packed._pack.dir))
    assert files == sorted(session_files(packed.manifest) + [WEIGHTS])
    own = os.path.getsize(os.path.join(zoo.resolve(CIFAR), "weights.bin"))
    size = os.path.getsize(os.path.join(packed._pack.dir, WEIGHTS))
    assert size == packed._pack.size and own <= size <= own * 1.01      # each tensor once, k=G's holding k<G's
    if _version() >= (1, 15):                # 1.15.1 and 1.32 map external data; 1.11.0 reads it
        assert packed._pack.mapped()                                  # mapped, not read into copies
        assert packed.packing.startswith("one optimised copy")
    else:
        assert packed._pack.mapped() is False and "reads the weights" in packed.packing


def test_a_pack_removed_underneath_is_made_again_and_closing_removes_it(tmp_path, monkeypatch):
    import shutil
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))      # as systemd sets it
    ms = ModelSet.load(zoo.resolve(CIFAR), threads=1)
    first = ms._pack.dir
    assert os.path.dirname(first) == str(tmp_path) and os.stat(first).st_mode & 0o777 == 0o700
    shutil.rmtree(first)                                   # a tmp cleaner
    x = np.random.default_rng(1).random((2,) + ms.input_shape, dtype=np.float32)
    split = ms.run_split(4, x, [(1, 2), (3, 4)])        # its lanes' sessions are made now
    assert np.abs(split - ms.run(4, x)).max() <= 1e-5
    again = ms._pack.dir
    assert again != first and os.path.exists(os.path.join(again, WEIGHTS))
    ms.close()
    assert not os.path.exists(again)


def test_a_dead_process_pack_is_swept_and_a_live_one_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / ("%s%d-cifar10-g4-x" % (PREFIX, dead.pid))
    live = tmp_path / ("%s%d-cifar10-g4-y" % (PREFIX, os.getpid()))
    other = tmp_path / "something-else"
    for d in (left, live, other):
        d.mkdir()
    d = zoo.resolve("fashion-mnist-g4")
    from models import manifest
    p = Pack(d, session_files(manifest.read(d)), root=str(tmp_path))
    assert not left.exists() and live.exists() and other.exists()
    assert os.path.dirname(p.dir) == str(tmp_path)
    p.close()
    assert not os.path.exists(p.dir)


def test_a_set_that_cannot_be_packed_loads_unpacked_and_says_why(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(not_a_folder))
    ms = ModelSet.load(zoo.resolve("fashion-mnist-g4"), threads=1)
    assert ms._pack is None and ms.packing.startswith("off: ") and "file" in ms.packing
    x = np.zeros((1,) + ms.input_shape, np.float32)
    assert ms.run(4, x).shape == (1, 10)


def test_the_wire_format_is_read_and_written_back_byte_for_byte():
    from models.packed import PackError, _encode, _fields
    for f in ("k4.onnx", "s2.onnx", "h1.onnx"):
        with open(os.path.join(zoo.resolve(CIFAR), f), "rb") as fh:
            buf = fh.read()
        assert _encode(_fields(buf)) == buf
    for bad in (b"\x08", b"\x0a\x05ab", b"\x0b"):       # a cut varint, a cut string, a group
        with pytest.raises(PackError):
            _fields(bad)


def test_packing_needs_no_onnx_package():
    """A board has onnxruntime, not onnx (a training extra): packing must not import it."""
    code = ("import sys; sys.modules['onnx'] = None\n"          # import onnx now fails
            "from models import ModelSet, zoo\n"
            "ms = ModelSet.load(zoo.resolve('fashion-mnist-g4'), threads=1)\n"
            "print(ms.packing)")
    from tests.daemon_harness import ROOT
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith(("one optimised copy", "optimised once")), r.stdout + r.stderr


def test_a_forked_child_leaves_its_parents_pack(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    ms = ModelSet.load(zoo.resolve("fashion-mnist-g4"), threads=1)
    pid = os.fork()
    if pid == 0:                      # the child exits the way a script does: finalizers run
        ms._pack._finalizer()
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.path.exists(os.path.join(ms._pack.dir, WEIGHTS))
    ms.close()
    assert not os.path.exists(ms._pack.dir)
