"""After `handle.remove()`, nothing of sr_plugin holds the small model: its memory (2.6 GB for Wan 1.3B in bf16)
is the user's to free, whatever accelerations are still on the pipeline and however many pipelines there are.
And the pipeline's own transformer is refused as the small model before anything changes."""

from __future__ import annotations

import gc
import weakref

import pytest
from pipeline_helpers import run

import sr_plugin
from sr_plugin.lab.tiny import tiny_pair


def accelerations(pipe):
    return sr_plugin.accelerate(pipe, teacache=sr_plugin.TeaCacheConfig(0.1, "identity"), pab=True)


def gone(ref: weakref.ref) -> bool:
    gc.collect()
    return ref() is None


@pytest.mark.parametrize(
    "accelerations_first", [False, True], ids=["accelerations-stay-on", "accelerations-removed-first"]
)
def test_a_removed_small_model_is_freed(family, accelerations_first):
    pipe, small = tiny_pair(family)
    handle = sr_plugin.apply(pipe, small, switch_step=2)
    accel = accelerations(pipe)
    run(pipe, family, steps=4)
    ref = weakref.ref(small)
    del small
    if accelerations_first:
        accel.remove()
    handle.remove()
    assert gone(ref)
    assert [r.model for r in handle.trace] == ["large"] * 2 + ["small"] * 2 and handle.switch_step == 2
    run(pipe, family, steps=4)  # the pipeline and its accelerations go on without it


def test_a_small_model_shared_by_two_pipelines_is_freed_once_both_remove(family):
    (pipe_a, small), (pipe_b, _) = tiny_pair(family), tiny_pair(family)
    handles = [sr_plugin.apply(pipe_a, small, switch_step=2), sr_plugin.apply(pipe_b, small, switch_step=1)]
    accel = accelerations(pipe_b)
    for pipe in (pipe_a, pipe_b):
        run(pipe, family, steps=3)
    ref = weakref.ref(small)
    del small
    handles[0].remove()
    assert not gone(ref)  # pipe_b still uses it
    handles[1].remove()
    assert gone(ref)
    accel.remove()


def test_the_pipelines_own_transformer_is_refused_as_the_small_model(family):
    pipe, _ = tiny_pair(family)
    before = dict(vars(pipe)), dict(vars(pipe.transformer))
    with pytest.raises(ValueError, match="small_transformer is the pipeline's own transformer"):
        sr_plugin.apply(pipe, pipe.transformer)
    assert (dict(vars(pipe)), dict(vars(pipe.transformer))) == before
    assert sr_plugin.handle_of(pipe) is None
