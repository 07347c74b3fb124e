"""``SysfsPlatform``: one adapter for every real board. The board is data (a BoardSpec);
what differs between kernels and revisions is discovered (see discover.py).

Writes follow docs/platforms.md, "Setting a frequency": with the ``userspace`` governor, one exact frequency
(``scaling_setspeed`` / ``userspace/set_freq``); otherwise min = max, written in the order
the kernel accepts (raising: max first; lowering: min first). Only what changed is written,
and what the kernel actually set is read back.

Every file is saved before its first write, to a JSON file in the state directory that is
synced before the write happens. :meth:`stop` restores it; :meth:`start` restores what a
crashed earlier run left behind before it touches anything else.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict, List, Optional, Tuple

from . import cpuload, discover
from .energy import EnergyMeter, read_watts
from .files import read_json, write_json
from .owner import BOARD_DIR, Ownership
from .model import BoardSpec, Platform, Target
from .sysfs import KernelRejected, NotPermitted, PlatformError, Sysfs, Vanished

log = logging.getLogger("dnnscale.platform")
ORIGINALS = "platform-originals.json"
_PAIRS = (("scaling_min_freq", "scaling_max_freq"), ("min_freq", "max_freq"))


class UnresolvedRecord(PlatformError):
    """A crash record that cannot be trusted (unreadable, torn, or naming files outside the
    board's control files) was set aside; nothing is written until someone resolves it."""


class Originals:
    """Values of sysfs files before dnnscale first wrote them, kept on disk (the crash
    record). A record that cannot be read or trusted is never deleted nor overwritten: it is
    kept aside (``<record>.unreadable-<time>``) and, while such a file is there, ``blocked``
    says why and nothing is recorded, so nothing is written to the board."""

    def __init__(self, fs: Sysfs, state_dir: Optional[str]):
        self.fs = fs
        self.path = os.path.join(state_dir, ORIGINALS) if state_dir else None
        self.saved: Dict[str, str] = {}
        self.blocked = ""

    def aside(self) -> List[str]:
        """Records set aside earlier and not resolved yet."""
        if not self.path:
            return []
        d = os.path.dirname(self.path)
        try:
            names = os.listdir(d)
        except OSError:
            return []
        return sorted(os.path.join(d, n) for n in names if n.startswith(ORIGINALS + ".unreadable-"))

    def _set_aside(self, why: str) -> str:
        dst = "%s.unreadable-%s" % (self.path, time.strftime("%Y%m%dT%H%M%S"))
        try:
            os.rename(self.path, dst)
        except OSError as e:
            dst = "%s (where it is: it could not be moved, %s)" % (self.path, e.strerror or e)
        self.blocked = ("the crash record %s %s; it is kept as %s, and dnnscale changes nothing on the board "
                        "until it is resolved: put the board back by hand (or reboot), then delete that file "
                        "(docs/reliability.md)" % (self.path, why, dst))
        return self.blocked

    def load(self, allowed=None) -> Dict[str, str]:
        """The record a crashed run left, or {}. ``allowed(path)``: whether a key is one of
        the board's control files. Raises UnresolvedRecord where the record, or one set aside
        before, cannot be trusted."""
        aside = self.aside()
        if aside:
            self.blocked = ("an unresolved crash record is kept as %s: dnnscale changes nothing on the board "
                            "until it is resolved (put the board back by hand or reboot, then delete that file; "
                            "docs/reliability.md)" % aside[0])
            raise UnresolvedRecord(self.blocked)
        if not self.path or not os.path.lexists(self.path):
            return {}
        try:
            data = read_json(self.path)
            if not isinstance(data, dict) or not isinstance(data.get("files"), dict) \
                    or not all(isinstance(k, str) and isinstance(v, str) for k, v in data["files"].items()):
                raise ValueError("is not a record of files and values")
        except (OSError, ValueError) as e:
            raise UnresolvedRecord(self._set_aside("could not be read (%s)" % (getattr(e, "strerror", None) or e)))
        if data.get("root") != self.fs.root:
            log.warning("%s belongs to another sysfs root (%s)", self.path, data.get("root"))
            raise UnresolvedRecord(self._set_aside("belongs to another sysfs root (%s)" % data.get("root")))
        outside = [k for k in data["files"] if allowed is not None and not allowed(k)]
        if outside:
            raise UnresolvedRecord(self._set_aside("names %s, which is not one of the board's control files"
                                                   % outside[0]))
        return dict(data["files"])

    def _flush(self) -> None:
        if not self.path:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_json(self.path, {"root": self.fs.root, "files": self.saved}, indent=1)
        except OSError as e:
            raise PlatformError("cannot save the board's settings to %s before changing them (%s)"
                                % (self.path, e.strerror or e)) from None

    def remember(self, p: str) -> None:
        """Save ``p``'s current value (once) before it is first written; a value that cannot
        be saved is not written (PlatformError)."""
        if self.blocked:
            raise PlatformError(self.blocked)
        if p not in self.saved:
            self.saved[p] = self.fs.read(p)
            try:
                self._flush()
            except PlatformError:
                del self.saved[p]
                raise

    def change(self, p: str, value) -> str:
        """Write ``value`` to ``p``, its original recorded first; return the value it held. A
        write the kernel refused changed nothing, so it leaves no record (which would fail to
        restore at every start)."""
        first = p not in self.saved
        self.remember(p)
        old = self.fs.read(p) if not first else self.saved[p]
        try:
            self.fs.write(p, value)
        except PlatformError:
            if first:
                self.forget(p)
            raise
        return old

    def forget(self, p: str) -> None:
        """Drop ``p`` from the record: it was never changed after all."""
        if self.saved.pop(p, None) is not None:
            self._sync()

    def _sync(self) -> None:
        """The record on disk as ``saved`` is now: written while it holds anything, gone when
        it is empty. A failure is logged: the worst left is a record the next start restores."""
        try:
            if self.saved:
                self._flush()
            elif self.path and os.path.exists(self.path):
                os.remove(self.path)
        except PlatformError as e:
            log.error("%s", e)
        except OSError as e:
            log.error("cannot remove %s (the next start restores what it records again): %s", self.path,
                      e.strerror or e)

    def restore(self, keep: Tuple[str, ...] = ()) -> List[str]:
        """Write the saved values back (min/max pairs in a valid order, governors last),
        except the files in ``keep``, which stay as they are and stay saved; return the
        errors. The record on disk goes only when everything was restored."""
        files = {p: v for p, v in self.saved.items() if p not in keep}
        errors: List[str] = []
        by_dir: Dict[str, Dict[str, str]] = {}
        for p, v in files.items():
            by_dir.setdefault(os.path.dirname(p), {})[os.path.basename(p)] = v
        for d, vals in by_dir.items():
            order: List[str] = []
            for lo, hi in _PAIRS:
                if lo in vals and hi in vals:
                    try:
                        cur_lo = self.fs.read_int(d + "/" + lo)
                        max_first = int(vals[hi]) == 0 or int(vals[hi]) >= cur_lo
                    except (PlatformError, ValueError):
                        max_first = True
                    order += [hi, lo] if max_first else [lo, hi]
            order += [n for n in vals if n not in order and "governor" not in n]
            order += [n for n in vals if "governor" in n]
            for n in order:
                try:
                    self.fs.write(d + "/" + n, vals[n])
                except PlatformError as e:
                    errors.append(str(e))
        if not errors:
            self.saved = {p: v for p, v in self.saved.items() if p in keep}
            self._sync()
        return errors


class SysfsPlatform(Platform):
    def __init__(self, spec: BoardSpec, root: str = "/", state_dir: Optional[str] = None,
                 fs: Optional[Sysfs] = None, settle: bool = True):
        super().__init__()
        self.settle = settle
        self.spec = spec
        self.fs = fs or Sysfs(root)
        self.desc = discover.describe(self.fs, spec)
        self.originals = Originals(self.fs, state_dir)
        self.meter: Optional[EnergyMeter] = None
        self.energy_reason = ""
        self._set: Dict[str, int] = {}          # control dir → kHz we last set there
        self._pinned: Optional[List[int]] = None
        self._affinity_before = sorted(os.sched_getaffinity(0))
        self._warned_pin = set()
        self.owner = Ownership()

    # ------------------------------------------------------------------ description
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def targets(self) -> Dict[str, Target]:
        return self.desc.targets

    def describe(self) -> Dict:
        """What is on the board, and what this process may do with it (``access``): DVFS and
        energy are "enabled"/"available" only where this user can write and read the files."""
        d = self.desc.to_dict()
        rails = [r.name for r in self._energy_rails()]
        acc = self.access()
        reason = self.energy_reason or ("" if rails else "no power sensor on this board")
        if rails and not acc["energy"] and not reason:
            reason = "this user (%s) cannot %s" % (acc["user"], acc["energy_blocked"])
        d["energy"] = {"available": bool(rails) and not reason, "reason": reason,
                       "rails": rails, "metering": self.meter is not None}
        dvfs_reason = self.dvfs_reason
        if self.dvfs_enabled and not any(acc["dvfs"].values()):
            dvfs_reason = "this user (%s) cannot write %s" % (acc["user"], acc["dvfs_blocked"])
        d["dvfs"] = {"enabled": self.dvfs_enabled and any(acc["dvfs"].values()), "reason": dvfs_reason}
        d["access"] = acc
        d["notes"] = self.spec.notes
        return d

    def access(self) -> Dict:
        """Per target, whether this user may write the files a frequency change writes (the
        min/max pair every method falls back to); whether it may read the energy rails and
        switch on the sensors that are off; and, where not, what grants it."""
        dvfs, dvfs_blocked, blocked_by = {}, "", {}

        def files(t):
            if t.parts:
                return [f for p in t.parts if p.freqs_khz and p.control for f in files(p)]
            pair = ("min_freq", "max_freq") if t.kind == "gpu" else ("scaling_min_freq", "scaling_max_freq")
            return [d + "/" + f for d in t.control for f in pair]
        for name, t in self.targets.items():
            if not (t.freqs_khz and t.control):
                continue
            blocked = [f for f in files(t) if not self.fs.can(f, write=True)]
            dvfs[name] = not blocked
            dvfs_blocked = dvfs_blocked or (blocked[0] if blocked else "")
            if blocked:
                blocked_by[name] = blocked[0]
        energy_blocked = ""
        for r in self._energy_rails():
            if not self.fs.can(r.path):
                energy_blocked = "read " + r.path
            elif r.enable and not self.fs.can(r.enable, write=True):
                try:
                    on = self.fs.read(r.enable) == "1"
                except PlatformError:
                    on = False
                if not on:
                    energy_blocked = "switch on the sensor " + r.enable
            if energy_blocked:
                break
        user = self.fs.user()
        needs = (dvfs and not all(dvfs.values())) or energy_blocked
        remedy = ""
        if needs and user == "root":     # root is refused only by a read-only /sys (or a container)
            remedy = "the file is not writable even for root: /sys is mounted read-only here"
        elif needs:
            remedy = ("run as root, or install systemd/dnnscale-sysfs.conf and systemd/90-dnnscale-devfreq.rules "
                      "and run as a member of group dvfs (docs/deployment.md, \"Without root\")")
        return {"user": user, "dvfs": dvfs, "dvfs_blocked": dvfs_blocked, "dvfs_blocked_by": blocked_by,
                "energy": not energy_blocked,
                "energy_blocked": energy_blocked, "remedy": remedy}

    def host_cpus(self, target: str) -> List[int]:
        t = self.targets.get(target)
        return self._host_cpus_of(t) if t is not None else []

    def _host_cpus_of(self, t: Target) -> List[int]:
        return list(t.online) if t.kind == "cpu" else []

    def pin_lost(self) -> None:
        self._pinned = []          # pinned, to no one set: the next pin writes, stop restores

    def host_gpu(self) -> bool:
        return "gpu" in self.targets

    # ------------------------------------------------------------------ energy
    @property
    def energy_available(self) -> bool:
        return self.meter is not None

    @property
    def settle_s(self) -> float:
        """How long after a frequency change the power reads belong to the new frequency:
        two sampling periods of the meter, whose period is at least the slowest sensor's
        refresh (XU3 INA231: 263.8 ms, so 0.53 s; an INA3221 converts on every read, so two
        20 ms periods); 0 for a counter (RAPL), without a meter, or with ``settle=False`` (a
        fake tree's sensors never change)."""
        if self.meter is None or self.meter.counter or not self.settle:
            return 0.0
        return 2 * self.meter.period

    @property
    def energy_degraded(self) -> str:
        return (self.meter.error or "") if self.meter is not None else ""

    def joules(self) -> Optional[float]:
        """None while a sensor read fails (the meter retries by itself: energy_degraded)."""
        m = self.meter
        if m is None:
            return None
        try:
            return m.joules()
        except PlatformError:
            return None

    def energy_between(self, j0: float, j1: float) -> float:
        return self.meter.energy_between(j0, j1) if self.meter is not None else super().energy_between(j0, j1)

    # ------------------------------------------------------------------ lifecycle
    def claim(self, doing: str) -> None:
        """Take the board where this run will write it (frequencies, sensors to switch on, or
        a crash record to restore); raise owner.Busy naming the owner. Before
        :meth:`restore_pending`: a record is restored only once the run that wrote it is gone."""
        writes = self.dvfs_enabled or any(r.enable for r in self._energy_rails()) or \
            bool(self.originals.path and os.path.lexists(self.originals.path))
        if writes:
            self.owner.claim(self.fs.path(BOARD_DIR), "the board (%s)" % self.fs.path(BOARD_DIR), doing)

    def release(self) -> None:
        self.owner.release()

    def _is_control_file(self, p: str) -> bool:
        """A file this adapter may have written: in a discovered cpufreq/devfreq directory, or
        a sensor's ``enable``; no ``..``, nothing else."""
        if not isinstance(p, str) or os.path.normpath(p) != p or not p.startswith("/sys/"):
            return False
        dirs = {d for t in list(self.targets.values()) + ([self.desc.gpu] if self.desc.gpu else []) for d in t.control}
        return os.path.dirname(p) in dirs or p in {r.enable for r in self.desc.rails if r.enable}

    def restore_pending(self) -> List[str]:
        """Restore what a crashed earlier run left (its saved originals); return the errors.
        An untrusted record turns DVFS off (the reason names the file kept aside)."""
        try:
            pending = self.originals.load(self._is_control_file)
        except UnresolvedRecord as e:
            self.disable_dvfs("record", str(e))
            log.error("%s", e)
            return [str(e)]
        if not pending:
            return []
        log.warning("restoring %d platform settings left by an earlier run", len(pending))
        self.originals.saved.update(pending)
        errors = self.originals.restore()
        # Discovered again: the limits in force were the crashed run's (a max it held low),
        # which would cut every table at that frequency for this whole run.
        self.desc = discover.describe(self.fs, self.spec)
        return errors

    def start(self) -> List[str]:
        """Enable the sensors and start metering (after :meth:`restore_pending`)."""
        self._start_energy()
        return []

    def reset(self) -> List[str]:
        """Put back every file written so far (as ``stop`` does) but keep metering: after the
        start-up profile, so that serving starts from the board's own settings. The power
        sensors this run enabled stay enabled (and saved) until :meth:`stop`: a board that
        boots with them off would otherwise read 0 W for the rest of the run."""
        self._set.clear()
        return self.originals.restore(keep=tuple(r.enable for r in self._energy_rails() if r.enable)
                                      if self.meter is not None else ())

    def stop(self) -> List[str]:
        """The board back to its originals first, whatever fails after (a full descriptor
        table, a dead meter thread); then metering and the thread pinning."""
        self._set.clear()
        errors = self.originals.restore()
        try:
            if self.meter:
                self.meter.stop()
        except Exception as e:          # the board is restored already: only say so
            log.error("could not stop the energy meter: %s", e)
        if self._pinned is not None:
            try:
                self._setaffinity(self._affinity_before)
            except (PlatformError, OSError) as e:
                log.error("could not undo the thread pinning: %s", e)
            self._pinned = None
        return errors

    def _energy_rails(self):
        by_name = {r.name: r for r in self.desc.rails}
        return [by_name[n] for n in self.spec.energy_rails if n in by_name]

    def _start_energy(self) -> None:
        rails = self._energy_rails()
        if not rails:
            self.energy_reason = "no power sensor on this board (energy is reported as null)"
            return
        try:
            for r in rails:
                if r.enable and self.fs.read(r.enable) != "1":
                    self.originals.change(r.enable, 1)
            self.meter = EnergyMeter(self.fs, rails)
            self.meter.start()
        except PlatformError as e:
            self.meter = None
            self.energy_reason = "energy reporting off: %s" % e
            log.warning("%s", self.energy_reason)

    # ------------------------------------------------------------------ frequency
    def frequency(self, target: str) -> Optional[int]:
        """The frequency the kernel reports now (kHz), or None without cpufreq/devfreq; also
        the GPU's where it is not a target (the XU3's Mali)."""
        if target not in self.targets and self.desc.gpu is not None and target == self.desc.gpu.name:
            return self._frequency(self.desc.gpu)
        return super().frequency(target)

    def _frequency(self, t: Target) -> Optional[int]:
        if not t.control:
            return None
        d = t.control[0]
        if t.kind == "gpu":
            return self.fs.read_int(d + "/cur_freq") // 1000
        return self.fs.read_int(d + "/scaling_cur_freq")

    def _set_frequency(self, t: Target, khz: int) -> Optional[int]:
        """All or nothing: when a write fails, what this change already wrote is put back
        before the error is raised. Only what changed is written."""
        journal: List[Tuple[str, str]] = []     # (file, its value before this change), in write order
        try:
            for d in t.control:
                if self._set.get(d) == khz:
                    continue
                if t.kind == "gpu":
                    self._set_devfreq(d, t, khz * 1000, journal)
                else:
                    self._set_cpufreq(d, t.method, khz, journal)
        except PlatformError:
            for d in t.control:
                self._set.pop(d, None)
            self._rollback(journal)
            raise
        for d in t.control:
            self._set[d] = khz
        return self._frequency(t)

    def _rollback(self, journal: List[Tuple[str, str]]) -> None:
        for p, old in reversed(journal):
            try:
                self.fs.write(p, old)
            except PlatformError as e:
                log.error("could not roll back %s to %r: %s", p, old, e)

    def _set_cpufreq(self, d: str, method: str, khz: int, journal) -> None:
        if method == "userspace":
            self._ensure_governor(d + "/scaling_governor", "userspace", journal)
            self._write(d + "/scaling_setspeed", khz, journal)
        else:
            self._write_minmax(d + "/scaling_min_freq", d + "/scaling_max_freq", khz, journal)

    def _set_devfreq(self, d: str, t: Target, hz: int, journal) -> None:
        if t.method == "userspace":
            before = self.fs.read(d + "/governor")
            self._ensure_governor(d + "/governor", "userspace", journal)
            try:
                self._write(d + "/userspace/set_freq", hz, journal)
                return
            except (NotPermitted, Vanished) as e:
                # The kernel recreates userspace/set_freq root-only on every governor switch
                # (docs/platforms.md), so a non-root daemon cannot use it: keep the board's own
                # governor and pin min = max, as jetson_clocks does.
                log.warning("%s: %s; pinning min_freq = max_freq under %s instead", t.name, e, before)
                self._write(d + "/governor", before, journal)
                t.method = "minmax"
        self._write_minmax(d + "/min_freq", d + "/max_freq", hz, journal)

    def _ensure_governor(self, p: str, gov: str, journal) -> None:
        if self.fs.read(p) != gov:
            self._write(p, gov, journal)

    def _write_minmax(self, lo: str, hi: str, value: int, journal) -> None:
        cur_hi = self.fs.read_int(hi)
        raising = cur_hi != 0 and value > cur_hi       # 0 = unset on XU3 4.14 devfreq (§5)
        for p in ((hi, lo) if raising else (lo, hi)):
            self._write(p, value, journal)

    def _write(self, p: str, value, journal) -> None:
        """One write, recorded first (setspeed/set_freq follow the governor: not restored); a
        write the kernel refused is neither journalled for rollback nor recorded."""
        if p.endswith("set_freq") or p.endswith("scaling_setspeed"):
            self.fs.write(p, value)
            return
        journal.append((p, self.originals.change(p, value)))

    # ------------------------------------------------------------------ mapping
    def cpu_load(self) -> Optional[cpuload.OthersLoad]:
        """From this machine's /proc/stat, like :meth:`pin` (the process's own CPUs, not the
        sysfs root's); ``DNNSCALE_LOAD_SIGNAL=off``: none (PlatformError for another value)."""
        try:
            return cpuload.from_env()
        except ValueError as e:
            raise PlatformError(str(e)) from None

    def pin(self, target: str) -> List[int]:
        """Pin every thread of this process to ``target``'s online CPUs. CPUs that this
        machine lacks (a fake tree) are dropped with one warning; none left → no pinning.
        Raises KernelRejected when the kernel refuses the mask (no online CPU in it)."""
        t = self.targets.get(target)
        if t is None or not t.cpus:
            return []
        online = discover.online_cpus(self.fs)
        want = [c for c in t.cpus if online is None or c in online]
        if not want:
            raise KernelRejected("target %s: all its CPUs (%s) are offline" % (target, t.cpus))
        have = set(range(os.cpu_count() or 1))
        cpus = sorted(set(want) & have)
        if cpus != sorted(want) and target not in self._warned_pin:
            self._warned_pin.add(target)
            log.warning("target %s wants CPUs %s; this machine has %s", target, want, sorted(have))
        if not cpus or cpus == self._pinned:
            return cpus
        self._setaffinity(cpus)
        return cpus

    def _setaffinity(self, cpus: List[int]) -> None:
        for tid in os.listdir("/proc/self/task"):   # the real process, not the sysfs root
            try:
                os.sched_setaffinity(int(tid), cpus)
            except ProcessLookupError:
                pass                                 # a thread that just exited
            except OSError as e:
                raise KernelRejected("pinning thread %s to CPUs %s: %s" % (tid, cpus, e.strerror)) from None
        self._pinned = cpus

    # ------------------------------------------------------------------ sensors
    def read_power(self) -> Dict[str, float]:
        out = {}
        for r in self.desc.rails:
            if r.kind != "rapl":
                try:
                    out[r.name] = read_watts(self.fs, r)
                except PlatformError:
                    pass
        return out

    def temperatures(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for zone, p in self.desc.thermal.items():
            try:
                if "#" in p:                        # XU3 3.10: one file with "name : m°C" lines
                    f, name = p.split("#")
                    line = [l for l in self.fs.read(f).splitlines() if l.split(":")[0].strip() == name][0]
                    out[zone] = int(line.split(":")[1]) / 1000.0
                else:
                    out[zone] = self.fs.read_int(p) / 1000.0
            except (PlatformError, IndexError, ValueError):
                continue
        return out
