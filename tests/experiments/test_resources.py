"""The stage meter: wall time and peak process-tree memory of overlapping stages, from one sampler thread."""

import time

from verl_variance.experiments.resources import StageMeter, tree_memory_bytes


def test_overlapping_stages_each_get_their_time_and_peak():
    meter = StageMeter(interval=0.05)
    baseline = tree_memory_bytes()[0] / 1e9
    with meter.stage("outer"):
        with meter.stage("inner"):
            block = bytearray(300_000_000)  # 0.3 GB, touched: resident while "inner" is open
            block[::4096] = b"x" * len(block[::4096])
            time.sleep(0.3)
            del block
        time.sleep(0.1)
    outer, inner = meter.stages["outer"], meter.stages["inner"]
    assert outer["seconds"] >= inner["seconds"] >= 0.3
    for stage in (outer, inner):
        assert stage["peak_pss_gb"] >= baseline + 0.25 and stage["peak_rss_sum_gb"] >= stage["peak_pss_gb"]
    time.sleep(0.2)
    assert meter._thread is None  # the sampler stops when no stage is open
    with meter.stage("outer"):  # a stage run twice adds its seconds
        time.sleep(0.05)
    assert meter.stages["outer"]["seconds"] >= outer["seconds"] + 0.05
