"""The stage meter: wall time and peak process-tree memory of overlapping stages, from one sampler thread."""

from verl_variance.experiments import resources
from verl_variance.experiments.resources import StageMeter


def test_overlapping_stages_each_get_their_time_and_peak(monkeypatch):
    """A fake clock and memory: each stage's seconds, and the peak every sample raises in all open stages."""
    now, memory = [0.0], [(1e9, 2e9)]  # (PSS, RSS sum) bytes
    monkeypatch.setattr(resources, "_clock", lambda: now[0])
    monkeypatch.setattr(resources, "tree_memory_bytes", lambda: memory[0])
    meter = StageMeter(interval=0.01)
    with meter.stage("outer"):
        now[0] = 1.0
        with meter.stage("inner"):
            thread = meter._thread
            memory[0] = (3e9, 5e9)  # what inner allocates, still held when it closes
            now[0] = 1.3
        memory[0] = (1.5e9, 2.5e9)
        now[0] = 1.5
    assert meter.stages == {
        "inner": {"seconds": 0.3, "peak_pss_gb": 3.0, "peak_rss_sum_gb": 5.0},
        "outer": {"seconds": 1.5, "peak_pss_gb": 3.0, "peak_rss_sum_gb": 5.0},  # inner's peak, seen while open
    }
    thread.join(timeout=30)
    assert not thread.is_alive() and meter._thread is None  # the sampler stops when no stage is open
    with meter.stage("outer"):  # a stage run twice adds its seconds and keeps its peak
        now[0] = 1.75
    assert meter.stages["outer"] == {"seconds": 1.75, "peak_pss_gb": 3.0, "peak_rss_sum_gb": 5.0}


def test_tree_memory_counts_what_this_process_holds():
    before = resources.tree_memory_bytes()
    block = bytearray(300_000_000)  # 0.3 GB, touched: resident
    block[::4096] = b"x" * len(block[::4096])
    pss, rss = resources.tree_memory_bytes()
    assert pss - before[0] >= 0.29e9 and rss >= pss
    del block
