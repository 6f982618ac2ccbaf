"""Each pipeline call is independent of the ones before it, and the pipeline's own features keep working."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from diffusers import CogVideoXDPMScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from pipeline_helpers import STEPS, run

import sr_plugin


def fresh_run(family: str, steps: int = STEPS, **apply_kwargs):
    """Output and trace of a call on a freshly built, freshly patched pipeline."""
    from sr_plugin.lab.tiny import tiny_pair

    pipe, small = tiny_pair(family)
    handle = sr_plugin.apply(pipe, small, **apply_kwargs)
    return run(pipe, family, steps=steps), handle.trace


def assert_next_call_is_fresh(pipe, handle, family: str, steps: int = STEPS, **apply_kwargs) -> None:
    """The next call equals, output and trace, a call on a freshly built, freshly patched pipeline."""
    out = run(pipe, family, steps=steps)
    expected_out, expected_trace = fresh_run(family, steps=steps, **apply_kwargs)
    assert torch.equal(out, expected_out) and handle.trace == expected_trace


def test_identical_calls_give_identical_outputs_and_traces(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small)
    first, trace1 = run(pipe, family), handle.trace
    second, trace2 = run(pipe, family), handle.trace
    assert torch.equal(first, second)
    assert trace1 == trace2 and handle.switch_step is not None


def test_step_count_may_change_between_calls(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small)
    run(pipe, family, steps=6)
    assert len(handle.trace) == 6
    assert_next_call_is_fresh(pipe, handle, family, steps=12)
    assert len(handle.trace) == 12


def test_interrupted_call_leaves_the_next_one_clean(pair, family):
    pipe, small = pair
    large = pipe.transformer
    handle = sr_plugin.apply(pipe, small, switch_step=2)

    def interrupt(p, i, t, kwargs):
        if i == 3:
            p._interrupt = True
        return {}

    run(pipe, family, callback_on_step_end=interrupt)
    assert [r.model for r in handle.trace] == ["large", "large", "small", "small"]
    assert pipe.transformer is large and "step" not in vars(pipe.scheduler)
    assert_next_call_is_fresh(pipe, handle, family, switch_step=2)


def test_failed_call_leaves_the_next_one_clean(pair, family):
    pipe, small = pair
    large = pipe.transformer
    handle = sr_plugin.apply(pipe, small, switch_step=3)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    small.forward = broken
    with pytest.raises(RuntimeError, match="simulated"):
        run(pipe, family)
    del small.forward
    assert pipe.transformer is large and "step" not in vars(pipe.scheduler)
    assert [r.model for r in handle.trace] == ["large"] * 3 and handle.switch_step is None
    assert not hasattr(small, "_diffusers_hook")  # the hand-off hook is gone, and its registry
    assert_next_call_is_fresh(pipe, handle, family, switch_step=3)


def test_callback_gets_the_right_arguments_and_can_edit_latents(pair, family):
    pipe, _ = pair
    seen: list[tuple[int, float]] = []

    def halve_at_step_4(p, i, t, kwargs):
        seen.append((i, float(t)))
        return {"latents": kwargs["latents"] * 0.5} if i == 4 else {}

    unpatched = run(pipe, family, callback_on_step_end=halve_at_step_4)
    unpatched_seen, seen[:] = list(seen), []
    handle = sr_plugin.apply(
        pipe, copy.deepcopy(pipe.transformer), switch_step=2
    )  # identity: outputs must match exactly
    patched = run(pipe, family, callback_on_step_end=halve_at_step_4)
    assert torch.equal(patched, unpatched)
    assert seen == unpatched_seen
    assert [i for i, _ in seen] == list(range(STEPS))
    assert [t for _, t in seen] == [r.timestep for r in handle.trace]
    assert not torch.equal(patched, run(pipe, family))  # the edit had an effect


@pytest.mark.parametrize(
    "family,scheduler_factory",
    [
        ("wan", lambda s: FlowMatchEulerDiscreteScheduler(shift=3.0)),
        # CogVideoX's DPM scheduler draws fresh noise from the generator at every step: the pipeline passes it
        # only if scheduler.step's signature names it, so this also checks the wrapped step keeps its signature.
        ("cogvideox", lambda s: CogVideoXDPMScheduler.from_config(s.config)),
    ],
)
def test_replacing_the_scheduler_after_apply_works(family, scheduler_factory):
    from sr_plugin.lab.tiny import tiny_pair

    pipe, _ = tiny_pair(family)
    handle = sr_plugin.apply(pipe, copy.deepcopy(pipe.transformer), switch_step=3)
    pipe.scheduler = scheduler_factory(pipe.scheduler)
    patched = run(pipe, family)
    handle.remove()
    assert torch.equal(patched, run(pipe, family))
    pipe.scheduler.set_timesteps(STEPS)
    assert [r.timestep for r in handle.trace] == [float(t) for t in pipe.scheduler.timesteps]
    assert [r.model for r in handle.trace].count("small") == STEPS - 3


def test_wrapped_step_keeps_the_scheduler_signature(pair, family):
    pipe, small = pair
    expected = inspect.signature(pipe.scheduler.step)
    sr_plugin.apply(pipe, small)
    seen = []

    def spy(p, i, t, kwargs):
        seen.append(inspect.signature(p.scheduler.step))
        return {}

    run(pipe, family, steps=3, callback_on_step_end=spy)
    assert seen and all(sig == expected for sig in seen)
    assert "step" in vars(type(pipe.scheduler))  # the class itself was never touched


def test_a_scheduler_with_several_calls_per_step_is_refused_before_generation():
    from sr_plugin.lab.tiny import tiny_pair

    pipe, small = tiny_pair("wan")
    sr_plugin.apply(pipe, small)
    pipe.scheduler = FlowMatchHeunDiscreteScheduler(shift=3.0)
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="order 2"):
        run(pipe, "wan")
    assert calls == []


def test_a_step_end_callback_sees_the_steps_own_transformer(pair, family):
    """The README's promise: a callback reading pipe.transformer at step i gets the model that ran step i."""
    from pipeline_helpers import CallLog

    pipe, small = pair
    large = pipe.transformer
    sr_plugin.apply(pipe, small, switch_step=3)
    log = CallLog(large=large, small=small)
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, "small" if p.transformer is small else "large", log.calls[-1]))
        return kwargs

    run(pipe, family, callback_on_step_end=callback)
    log.close()
    assert [(i, model) for i, model, _ in seen] == [(i, "large" if i < 3 else "small") for i in range(10)]
    assert all(model == ran for _, model, ran in seen)  # the model the step really called


@pytest.mark.parametrize("small_own", [None, "native"])
def test_the_large_models_attention_backend_is_the_small_ones_unless_it_has_its_own(small_own):
    """Wan's attention processors dispatch through diffusers' attention backends (CogVideoX's processors in
    diffusers 0.42 do not take one). CPU backends: native and math."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    from sr_plugin.integrations.user_cache_mirror import _attention_processors
    from sr_plugin.lab.tiny import tiny_wan

    pipe, small = tiny_wan()
    if small_own is not None:
        small.set_attention_backend(small_own)
    pipe.transformer.set_attention_backend("_native_math")
    handle = sr_plugin.apply(pipe, small, switch_step=3)
    seen = []
    hook = small.register_forward_pre_hook(
        lambda m, a: seen.append({p._attention_backend for p in _attention_processors(small)})
    )
    run(pipe, "wan")
    hook.remove()
    expected = AttentionBackendName("_native_math" if small_own is None else small_own)
    assert len(seen) == 14 and all(s == {expected} for s in seen)
    handle.remove()
    after = {p._attention_backend for p in _attention_processors(small)}
    assert after == ({None} if small_own is None else {AttentionBackendName(small_own)})
