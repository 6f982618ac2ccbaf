"""Cooperation schedules on real pipelines: every order against what the math says it must equal."""

from __future__ import annotations

import copy

import pytest
import torch
from pipeline_helpers import LINEAR, STEPS, CallLog, run, seen_through

import sr_plugin
from sr_plugin import PABConfig, TeaCacheConfig
from sr_plugin.lab.tiny import cogvideox_scheduler, tiny_cogvideox, tiny_wan
from sr_plugin.switch.schedule import Schedule, roles_of, segments_of

#: One schedule of each order (on STEPS = 10 steps), and the roles they give each step.
ORDERS = [
    "small:3,large",
    "large:3,small",
    "large:2,small:6,large",
    "small:2,large:6,small",
    "small",
    "small:30%,large:0.7,small",
]


def by_hand(pipe, small, roles, family="wan", **call):
    """The reference: the plain pipeline with ``pipe.transformer`` swapped by hand between steps (from the step-end
    callback), as a user would do it."""
    large = pipe.transformer
    models = {"large": large, "small": small}

    def swap(p, i, t, kwargs):
        if i + 1 < len(roles):
            p.transformer = models[roles[i + 1]]
        return kwargs

    pipe.transformer = models[roles[0]]
    try:
        return run(pipe, family, output_type="pt", callback_on_step_end=swap, **call)
    finally:
        pipe.transformer = large


@pytest.mark.parametrize("schedule", ORDERS)
def test_wan_every_order_equals_swapping_the_transformer_by_hand(schedule):
    pipe, small = tiny_wan()
    roles = roles_of(schedule, STEPS)
    reference = by_hand(pipe, small, roles)
    handle = sr_plugin.apply(pipe, small, schedule=schedule)
    log = CallLog(large=pipe.transformer, small=small)
    out = run(pipe, "wan", output_type="pt")
    log.close()
    assert torch.equal(out, reference)
    assert log.calls == [r for r in roles for _ in range(2)]  # cond + uncond on one model per step
    assert handle.segments == segments_of(roles)
    assert [r.model for r in handle.trace] == roles
    handovers = [j for j in range(1, len(roles)) if roles[j - 1 : j + 1] == ["large", "small"]]
    assert handle.switch_step == (handovers[0] if handovers else None)  # the first large -> small hand-over
    assert [(b.step, b.leaving, b.entering) for b in handle.boundaries] == [
        (j, roles[j - 1], roles[j]) for j in range(1, len(roles)) if roles[j] != roles[j - 1]
    ]
    handle.remove()
    assert torch.equal(run(pipe, "wan", output_type="pt"), by_hand(pipe, small, ["large"] * STEPS))


@pytest.mark.parametrize("schedule", ORDERS)
def test_an_identical_copy_reproduces_large_only_in_every_order(pair, family, schedule):
    """The identity map: a copy of the large model as the small one changes nothing, whichever runs when (for
    CogVideoX from the first step at zero terminal SNR, and across every return to the large model)."""
    pipe, _ = pair
    baseline = run(pipe, family, output_type="pt")
    handle = sr_plugin.apply(pipe, copy.deepcopy(pipe.transformer), schedule=schedule)
    assert torch.equal(run(pipe, family, output_type="pt"), baseline)
    assert handle.segments == segments_of(roles_of(schedule, STEPS))


@pytest.mark.parametrize(
    "schedule",
    ["small", "large:3,small", "large:6,small", "small:3,large", "large:2,small:6,large", "small:2,large:6,small"],
)
def test_cogvideox_mapping_holds_in_every_order(schedule):
    """A model seen through the 2b latent scale and noise schedule, mapped in and out at every boundary,
    reproduces large only (to float tolerance) from the first step and across returns; unmapped it does not."""
    pipe, _ = tiny_cogvideox()
    large_only = run(pipe, "cogvideox")
    small_schedule, small_scale = cogvideox_scheduler(3.0), 1.15258426
    other = seen_through(pipe, small_scale, small_schedule)
    handle = sr_plugin.apply(
        pipe, other, schedule=schedule, small_vae_scaling_factor=small_scale, small_scheduler=small_schedule
    )
    mapped = run(pipe, "cogvideox")
    scale = large_only.abs().max().item()
    assert torch.allclose(mapped, large_only, atol=1e-4 * scale, rtol=0), (mapped - large_only).abs().max()
    handle.remove()
    sr_plugin.apply(
        pipe,
        other,
        schedule=schedule,
        small_vae_scaling_factor=pipe.vae.config.scaling_factor,
        small_scheduler=pipe.scheduler,
    )
    assert (run(pipe, "cogvideox") - large_only).abs().max().item() > 1e-2 * scale


def test_a_noise_level_end_equals_diffusers_two_expert_path():
    """``large:t=R,small`` runs what WanPipeline(transformer=large, transformer_2=small, boundary_ratio=R) runs."""
    from test_handoff_exact import boundary_at, wan22

    pipe, small = tiny_wan()
    ratio = boundary_at(pipe, 4)
    reference = run(wan22(pipe, small, ratio), "wan", output_type="pt")
    handle = sr_plugin.apply(pipe, small, schedule=f"large:t={ratio},small")
    assert torch.equal(run(pipe, "wan", output_type="pt"), reference)
    assert handle.switch_step == 4


def test_an_adaptive_end_is_the_default_switch(pair, family):
    pipe, small = pair
    default = sr_plugin.apply(pipe, small)
    expected = run(pipe, family)
    k, record = default.switch_step, default.switch
    default.remove()
    handle = sr_plugin.apply(pipe, small, schedule="large:delta,small")
    assert torch.equal(run(pipe, family), expected) and handle.switch_step == k
    assert handle.switch == record and (record.min_switch_step, record.max_switch_step) == (3, 6)
    handle.remove()
    handle = sr_plugin.apply(pipe, small, schedule="large:delta,small:9,large", max_switch_step=5)
    run(pipe, family)
    assert [s.role for s in handle.segments] == ["large", "small", "large"] and handle.segments[1].first_step <= 5


@pytest.mark.parametrize(
    "bad, error, match",
    [
        ("", ValueError, "empty string"),
        ("small:20,large:10", ValueError, "ends must increase"),
        ("small:0,large", ValueError, "empty"),
        ("small:-1,large", ValueError, "negative"),
        ("tiny:3,large", ValueError, "unknown role"),
        (42, TypeError, "must be a string"),
        ([("small", "x"), ("large", None)], ValueError, "cannot read the end"),
    ],
)
def test_bad_schedules_are_refused_at_apply_with_the_pipeline_untouched(pair, family, bad, error, match):
    pipe, small = pair
    large = pipe.transformer
    with pytest.raises(error, match=match):
        sr_plugin.apply(pipe, small, schedule=bad)
    assert sr_plugin.handle_of(pipe) is None and "_sr_plugin_calls" not in vars(pipe) and pipe.transformer is large
    assert "_diffusers_hook" not in vars(small)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"delta": 0.01}, "pass one or the other"),
        ({"switch_step": 3}, "pass one or the other"),
        ({"min_switch_step": 3}, "has none"),
    ],
)
def test_a_schedule_with_the_one_switch_keywords_is_refused(pair, kwargs, match):
    pipe, small = pair
    with pytest.raises(ValueError, match=match):
        sr_plugin.apply(pipe, small, schedule="small:3,large", **kwargs)
    assert sr_plugin.handle_of(pipe) is None


def test_a_schedule_that_does_not_fit_the_call_is_refused_before_the_first_step(pair, family):
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small, schedule="small:8,large")
    log = CallLog(large=pipe.transformer, small=small)
    with pytest.raises(ValueError, match="beyond this call's 6 steps"):
        run(pipe, family, steps=6)
    assert log.calls == [] and handle.trace == [] and pipe.transformer is not small
    run(pipe, family, steps=12)
    log.close()
    assert [(s.role, s.first_step, s.end_step) for s in handle.segments] == [("small", 0, 8), ("large", 8, 12)]


def test_wan22_without_its_low_noise_expert_refuses_a_large_segment_past_the_boundary():
    from test_handoff_exact import boundary_at, wan22

    pipe, small = tiny_wan()
    high_only = wan22(pipe, None, boundary_at(pipe, 4))
    sr_plugin.apply(high_only, small, schedule="small:2,large:7,small")
    with pytest.raises(ValueError, match=r"up to step 6.*from step 4 on .*transformer_2.* is not loaded"):
        run(high_only, "wan")


@pytest.mark.parametrize("kind", ["teacache", "fbcache", "pab"])
def test_a_model_that_comes_back_does_not_reuse_what_it_cached_before(pair, family, kind):
    """Each acceleration set to reuse whatever it may: every model computes at the first step of each of its
    segments (fresh state), and reuses otherwise. Without the reset at the boundary, the large model would reuse
    at step 6 what it cached at step 2."""
    pipe, small = pair
    handle = sr_plugin.apply(pipe, small, schedule="large:3,small:6,large")
    config = {
        "teacache": {"teacache": TeaCacheConfig(1e9, LINEAR)},
        "fbcache": {"fbcache": 1e9},
        "pab": {"pab": PABConfig(1000, 1000, (0, 1000))},
    }[kind]
    blocks = {"wan": "blocks", "cogvideox": "transformer_blocks"}[family]
    # Logged inside the caches' hooks (patched before them): a block they skip is not logged.
    tails = CallLog(large=getattr(pipe.transformer, blocks)[-1], small=getattr(small, blocks)[-1])
    sr_plugin.accelerate(pipe, **config)
    run(pipe, family)
    tails.close()
    per_step = 2 if family == "wan" else 1
    starts = {0, 3, 6}
    if kind == "pab":
        computed = {r.index for r in handle.trace if set(r.attention.values()) == {"computed"}}
        assert computed & set(range(STEPS - 1)) == starts, handle.trace
    else:
        computed_at = starts | ({STEPS - 1} if kind == "teacache" else set())  # TeaCache computes the last step
        expected = [handle.trace[j].model for j in sorted(computed_at) for _ in range(per_step)]
        assert tails.calls == expected
        if kind == "teacache":
            assert {r.index for r in handle.trace if set(r.cache.values()) == {"computed"}} == computed_at


@pytest.mark.parametrize("schedule", ["large:2,small:8,large", "large:2,small:4,large"])
def test_offload_large_leaves_and_comes_back_around_a_small_segment(pair, family, schedule):
    """On CPU the offloader is a spy: the large model leaves after its last step, its weights start coming back
    PREFETCH_STEPS small steps before its return and the device waits for them only at the return; a small
    segment no longer than that keeps them on the device."""
    from test_small_device_and_offload import SpyOffloader

    pipe, small = pair
    with pytest.warns(UserWarning, match="does nothing"):
        handle = sr_plugin.apply(pipe, small, schedule=schedule, offload_large=True)
    log = CallLog(large=pipe.transformer, small=small)
    handle.router.offloader = SpyOffloader(log.calls)
    run(pipe, family)
    log.close()
    events = log.calls
    per_step = 2 if family == "wan" else 1
    models = [e for e in events if e in ("large", "small")]
    assert models == [r for r in roles_of(schedule, STEPS) for _ in range(per_step)]
    if schedule.endswith("4,large"):
        assert events == models  # two small steps: nothing moves
        return
    back = Schedule.parse(schedule).parts[1][1].step
    offload, prefetch, wait = (events.index(e) for e in ("offload", "prefetch", "wait"))
    assert events[:offload] == ["large"] * 2 * per_step  # right after the large model's last step
    between = events[offload + 1 : prefetch]
    assert between == ["small"] * (back - 2 - 2) * per_step  # PREFETCH_STEPS = 2 small steps before the return
    assert events[prefetch + 1 : wait] == ["small"] * 2 * per_step and events[wait + 1] == "large"
