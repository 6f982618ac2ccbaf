"""The calibration's prefix replay: a run that replays the steps it shares with an earlier run is bit-identical to
the same run computed from scratch, in every order, with and without a cache, on both families."""

from __future__ import annotations

import numpy as np
import pytest

from sr_plugin import TeaCacheConfig
from sr_plugin.calibration.candidates import Candidate
from sr_plugin.calibration.runner import Runner
from sr_plugin.calibration.tape import segment_start
from sr_plugin.lab.family_tools import tools_for
from sr_plugin.lab.tiny import TINY_CALL, tiny_pair

STEPS = 10
PAIR = ("a red fox", 3)

#: (the run recorded first, the run that replays it, the steps it may replay: their common prefix of roles, and
#: with a cache only up to the start of the segment the second run is in there)
CASES = {
    "large-first": (None, "large:6,small", 6, 6),
    "small-first": ("small", "small:4,large", 4, 4),
    "sandwich": ("large:3,small:6,large", "large:3,small:8,large", 6, 3),
    "adaptive": (None, "large:delta=0.5,small", None, 0),
}


@pytest.mark.parametrize("family", ["wan", "cogvideox"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cache", [False, True], ids=["plain", "teacache"])
def test_a_replayed_run_is_bit_identical_to_a_fresh_one(family, case, cache):
    first, second, plain_steps, cached_steps = CASES[case]
    accel = {"teacache": TeaCacheConfig(tools_for(family).tiny_teacache_threshold, "identity")} if cache else {}
    pipe, small = tiny_pair(family)
    call = dict(TINY_CALL[family])
    fresh = Runner(pipe, small, steps=STEPS, call=call, replay=False).run(Candidate(second, accel), PAIR, compare=False)
    runner = Runner(pipe, small, steps=STEPS, call=call)
    runner.run(Candidate(first, accel), PAIR, compare=False)
    replayed = runner.run(Candidate(second, accel), PAIR, compare=False)
    assert np.array_equal(replayed.video, fresh.video)
    assert replayed.roles == fresh.roles
    expected = cached_steps if cache else plain_steps
    if expected is None:  # an adaptive end: replayed up to its hand-off, where its roles part from large only's
        expected = fresh.roles.index("small")
    assert replayed.replayed == expected
    if cache:  # the cache acted in the steps that ran (the replay skips none of its decisions)
        assert any(v == "skipped" for r, _ in fresh.steps for v in r.cache.values())
        assert [r.cache for r, _ in replayed.steps] == [r.cache for r, _ in fresh.steps]
    assert runner.computed["large"] + runner.computed["small"] == 2 * STEPS - replayed.replayed


def test_segment_starts():
    roles = ["large"] * 3 + ["small"] * 5 + ["large"] * 2
    assert [segment_start(roles, j) for j in (0, 2, 3, 6, 8, 9, 10)] == [0, 0, 3, 3, 8, 8, 10]
