"""Peak resident memory of this process tree (driver JVM, Python workers), sampled from /proc."""

from __future__ import annotations

import os
import threading


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(name))
    return tree


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def _kind(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\x00", b" ").decode(errors="replace")
    except OSError:
        return "other"
    if "java" in cmd.split(" ", 1)[0]:
        return "jvm"
    if "pyspark.daemon" in cmd or "pyspark/daemon" in cmd or "pyspark.worker" in cmd:
        return "python_worker"
    return "other"


class PeakMemory:
    """Samples RSS of every descendant every `interval` s; keeps peaks per kind of process."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.peak: dict[str, float] = {"driver_python": 0.0, "jvm": 0.0, "python_worker_max": 0.0, "python_workers_total": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            tree = _children()
            todo, seen = list(tree.get(me, [])), []
            while todo:
                pid = todo.pop()
                seen.append(pid)
                todo += tree.get(pid, [])
            workers = 0.0
            for pid in seen:
                kind, rss = _kind(pid), _rss_mb(pid)
                if kind == "jvm":
                    self.peak["jvm"] = max(self.peak["jvm"], rss)
                elif kind == "python_worker":
                    workers += rss
                    self.peak["python_worker_max"] = max(self.peak["python_worker_max"], rss)
            self.peak["python_workers_total"] = max(self.peak["python_workers_total"], workers)
            self.peak["driver_python"] = max(self.peak["driver_python"], _rss_mb(me))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
