"""Wall time and peak memory of a stage, counting every process it starts (verl's Ray workers too)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

_clock = time.perf_counter
"""The stage clock (a test replaces it)."""


def tree_memory_bytes() -> tuple[int, int]:
    """(PSS, RSS) summed over this process and all its descendants, in bytes.

    RSS counts a page shared by several processes (torch's libraries, Ray's object store) once per
    process; PSS splits it between them, so the PSS sum is the tree's real footprint.
    """
    import psutil

    root = psutil.Process()
    pss = rss = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except psutil.Error:  # a child ended while we looked
            continue
        pss += getattr(info, "pss", info.rss)
        rss += info.rss
    return pss, rss


@dataclass
class StageMeter:
    """``with meter.stage("name"):`` records seconds and the peak process-tree PSS and RSS (GB) of each stage.

    The tree (``tree_memory_bytes``) is sampled as each stage opens and closes, and by one background thread
    every ``interval`` seconds while any stage is open; each sample raises the peak of every stage open at that
    moment (stages may overlap: runs in parallel). Reading each process's smaps is not free (about 10 ms per
    large process), hence one sampler at a modest rate.
    """

    interval: float = 2.0
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    _open: list[_Stage] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)

    def _sample(self) -> None:
        while True:
            with self._lock:
                if not self._open:
                    self._thread = None
                    return
            self._raise_peaks(tree_memory_bytes())
            time.sleep(self.interval)

    def _raise_peaks(self, sample: tuple[int, int]) -> None:
        with self._lock:
            for stage in self._open:
                stage.peak = (max(stage.peak[0], sample[0]), max(stage.peak[1], sample[1]))

    def _enter(self, stage: _Stage) -> None:
        with self._lock:
            self._open.append(stage)
            if self._thread is None:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        self._raise_peaks(tree_memory_bytes())

    def _exit(self, stage: _Stage) -> None:
        self._raise_peaks(tree_memory_bytes())
        with self._lock:
            self._open.remove(stage)
            previous = self.stages.get(stage.name, {"seconds": 0.0, "peak_pss_gb": 0.0, "peak_rss_sum_gb": 0.0})
            self.stages[stage.name] = {
                "seconds": round(previous["seconds"] + _clock() - stage.start, 2),
                "peak_pss_gb": round(max(previous["peak_pss_gb"], stage.peak[0] / 1e9), 3),
                "peak_rss_sum_gb": round(max(previous["peak_rss_sum_gb"], stage.peak[1] / 1e9), 3),
            }


class _Stage:
    def __init__(self, meter: StageMeter, name: str) -> None:
        self.meter, self.name = meter, name
        self.peak = (0, 0)

    def __enter__(self) -> _Stage:
        self.start = _clock()
        self.meter._enter(self)
        return self

    def __exit__(self, *exc) -> None:
        self.meter._exit(self)
