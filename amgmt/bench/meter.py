"""The CPU and memory meter of a timed run: client and server CPU seconds and peak RSS, read from getrusage and
/proc (Linux). It owns the sampling thread and the process-tree classification; it knows nothing of S3 or amgmt."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

SAMPLE_INTERVAL = 0.05


@dataclass(frozen=True)
class ResourceUsage:
    """What one timed run cost. The client is this process and its descendants, the server the process given as
    `server_pid` and its descendants (the embedded moto server is a child of the benchmark, yet not the client)."""

    client_user_seconds: float
    client_sys_seconds: float
    client_children_cpu_seconds: float  # of the client's CPU, what its child processes used (compression workers)
    client_peak_rss: int  # bytes: the highest sum of the client processes' RSS seen (sampled)
    client_start_rss: int  # the same sum when the run started: Python rarely gives memory back, see settle()
    server_cpu_seconds: float | None
    server_peak_rss: int | None
    meter_cpu_seconds: float  # the sampler thread's own cost, already taken out of the client's
    samples: int
    machine_cpu_seconds: float | None = None  # busy CPU time of the whole machine (/proc/stat), every process

    @property
    def client_cpu_seconds(self) -> float:
        return self.client_user_seconds + self.client_sys_seconds

    @property
    def other_cpu_seconds(self) -> float | None:
        """CPU the rest of the machine used meanwhile: other work competing with the run for the same cores."""
        if self.machine_cpu_seconds is None:
            return None
        ours = self.client_cpu_seconds + self.meter_cpu_seconds + (self.server_cpu_seconds or 0.0)
        return max(self.machine_cpu_seconds - ours, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_cpu_seconds": round(self.client_cpu_seconds, 3),
            "client_user_seconds": round(self.client_user_seconds, 3),
            "client_sys_seconds": round(self.client_sys_seconds, 3),
            "client_children_cpu_seconds": round(self.client_children_cpu_seconds, 3),
            "client_peak_rss": self.client_peak_rss,
            "client_start_rss": self.client_start_rss,
            "server_cpu_seconds": None if self.server_cpu_seconds is None else round(self.server_cpu_seconds, 3),
            "server_peak_rss": self.server_peak_rss,
            "meter_cpu_seconds": round(self.meter_cpu_seconds, 3),
            "other_cpu_seconds": None if self.other_cpu_seconds is None else round(self.other_cpu_seconds, 3),
            "samples": self.samples,
        }


@dataclass(frozen=True)
class _Proc:
    ppid: int
    started: int  # clock ticks after boot: tells a reused pid apart
    user: int  # clock ticks, own + reaped children's
    sys: int
    rss: int  # pages


def _machine_busy_ticks() -> int | None:
    """Clock ticks all CPUs spent on anything but idle and I/O wait since boot (/proc/stat)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    return sum(fields[:8]) - fields[3] - fields[4]


def _read_proc(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:  # gone
        return None
    # Fields after "(comm)": comm may hold spaces and parentheses, so split after its last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    return _Proc(
        ppid=int(fields[1]),
        started=int(fields[19]),
        user=int(fields[11]) + int(fields[13]),  # utime + cutime
        sys=int(fields[12]) + int(fields[14]),  # stime + cstime
        rss=int(fields[21]),
    )


_SELF, _CLIENT, _SERVER, _OTHER = "self", "client", "server", "other"
_Snapshot = dict[tuple[int, int], tuple[str, _Proc]]  # (pid, started) -> (role, stat)


class _ProcessTree:
    """The live processes that descend from this one, each classified once, when first seen, by its parent: the
    server's subtree, the client's (the rest of our descendants), or none of ours. Needs Linux's /proc."""

    def __init__(self, server_pid: int | None) -> None:
        self.root = os.getpid()
        self.server_pid = server_pid
        self.roles: dict[int, tuple[int, str]] = {}  # pid -> (started, role)

    def _role(self, pid: int, new: dict[int, _Proc], seen: set[int]) -> str:
        if pid == self.root:
            return _SELF
        if pid in self.roles:
            return self.roles[pid][1]
        proc = new.get(pid)
        if proc is None or pid in seen:
            return _OTHER
        seen.add(pid)
        parent = self._role(proc.ppid, new, seen)
        if pid == self.server_pid or parent == _SERVER:
            role = _SERVER
        elif parent in (_SELF, _CLIENT):
            role = _CLIENT
        else:
            role = _OTHER
        self.roles[pid] = (proc.started, role)
        return role

    def scan(self) -> _Snapshot:
        live = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        for pid in self.roles.keys() - live:
            del self.roles[pid]
        new = {pid: proc for pid in live - self.roles.keys() - {self.root} if (proc := _read_proc(pid))}
        for pid in new:
            self._role(pid, new, set())
        snapshot: _Snapshot = {}
        mine = [(pid, started, role) for pid, (started, role) in self.roles.items() if role != _OTHER]
        for pid, started, role in [(self.root, -1, _SELF), *mine]:
            proc = new.get(pid) or _read_proc(pid)
            if proc is not None and (role == _SELF or proc.started == started):
                snapshot[(pid, proc.started)] = (role, proc)
        return snapshot


def settle() -> None:
    """Give freed memory back before a measurement: collect cycles and ask glibc to return free heap pages (after
    large buffers were freed, glibc keeps them, and the next run's peak RSS would start from the last run's)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class ResourceMeter:
    """Client and server CPU seconds and peak RSS over a `with` block.

    CPU: this process's getrusage (all its threads) plus its reaped children's, plus the /proc deltas of live
    descendants (anyio's compression workers stay alive between runs, so RUSAGE_CHILDREN alone misses them). A
    process seen at the start that is gone at the end had its whole life added to its reaper's counters, so its
    start value is taken off. RSS: a thread sums the client's (and the server's) RSS every `interval` seconds; its
    own CPU time is measured and taken out of the client's. Linux only (/proc).
    """

    def __init__(self, *, server_pid: int | None, interval: float = SAMPLE_INTERVAL) -> None:
        self.server_pid = server_pid
        self.interval = interval
        self._tree = _ProcessTree(server_pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = {_CLIENT: 0, _SERVER: 0}
        self._samples = 0
        self._meter_cpu = (0.0, 0.0)
        self._start: _Snapshot = {}
        self._rusage: tuple[resource.struct_rusage, resource.struct_rusage] | None = None
        self._machine: int | None = None
        self._start_rss = 0
        self.usage: ResourceUsage | None = None

    def __enter__(self) -> ResourceMeter:
        settle()
        self._start = self._tree.scan()
        self._note(self._start)
        self._start_rss = self._peak[_CLIENT]
        self._rusage = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
        self._machine = _machine_busy_ticks()
        self._thread = threading.Thread(target=self._sample, name="amgmt-benchmark-meter", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._note(self._tree.scan())
        own = resource.getrusage(resource.RUSAGE_THREAD)
        self._meter_cpu = (own.ru_utime, own.ru_stime)

    def _note(self, snapshot: _Snapshot) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        totals = {_CLIENT: 0, _SERVER: 0}
        for role, proc in snapshot.values():
            totals[_CLIENT if role == _SELF else role] += proc.rss * page
        for role, total in totals.items():
            self._peak[role] = max(self._peak[role], total)
        self._samples += 1

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._thread is not None and self._rusage is not None
        self._stop.set()
        self._thread.join()
        end_self, end_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        machine_end = _machine_busy_ticks()
        end = self._tree.scan()
        self._note(end)
        tick = os.sysconf("SC_CLK_TCK")
        start_self, start_children = self._rusage
        d_user, d_sys = self._delta(end, _CLIENT)
        meter_user, meter_sys = self._meter_cpu
        reaped_user = end_children.ru_utime - start_children.ru_utime
        reaped_sys = end_children.ru_stime - start_children.ru_stime
        children = reaped_user + reaped_sys + (d_user + d_sys) / tick
        user = end_self.ru_utime - start_self.ru_utime - meter_user + reaped_user + d_user / tick
        system = end_self.ru_stime - start_self.ru_stime - meter_sys + reaped_sys + d_sys / tick
        server: float | None = None
        if self.server_pid is not None:
            s_user, s_sys = self._delta(end, _SERVER)
            server = (s_user + s_sys) / tick
        self.usage = ResourceUsage(
            client_user_seconds=max(user, 0.0),
            client_sys_seconds=max(system, 0.0),
            client_children_cpu_seconds=max(children, 0.0),
            client_peak_rss=self._peak[_CLIENT],
            client_start_rss=self._start_rss,
            server_cpu_seconds=server,
            server_peak_rss=self._peak[_SERVER] if self.server_pid is not None else None,
            meter_cpu_seconds=meter_user + meter_sys,
            samples=self._samples,
            machine_cpu_seconds=(machine_end - self._machine) / tick
            if machine_end is not None and self._machine is not None
            else None,
        )

    def _delta(self, end: _Snapshot, role: str) -> tuple[int, int]:
        user = system = 0
        for key, (r, proc) in end.items():
            if r == role:
                before = self._start.get(key)
                user += proc.user - (before[1].user if before else 0)
                system += proc.sys - (before[1].sys if before else 0)
        for key, (r, proc) in self._start.items():
            if r == role and key not in end:
                user -= proc.user
                system -= proc.sys
        return user, system
