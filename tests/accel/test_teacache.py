"""TeaCache: the published rule, per-branch/per-model/per-call state, and exactness when it does nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pipeline_helpers import LINEAR, MIX, STEPS, run

import sr_plugin
from sr_plugin import TeaCacheConfig
from sr_plugin.accel.teacache import TeaCacheState
from sr_plugin.adapters.wan import WAN_TEACACHE_COEFFICIENTS

#: Explicit per-model coefficients for the tiny models (they match no published config).
COEFFS = {
    "wan": {"large": "wan2.1-t2v-14b", "small": "wan2.1-t2v-1.3b"},
    "cogvideox": {"large": "cogvideox-5b", "small": "cogvideox-2b"},
}


def chain(rel: list[float], start: float = 1.0) -> list[torch.Tensor]:
    """Modulated inputs whose successive relative L1 changes are exactly ``rel``."""
    x = [torch.full((4,), start, dtype=torch.float64)]
    for r in rel:
        x.append(x[-1] * (1 + r))
    return x


def replay(inputs: list[torch.Tensor], threshold: float, coefficients, num_steps: int, warmup: int = 1) -> list[bool]:
    state = TeaCacheState()
    state.residuals = {"hidden_states": torch.zeros(1)}  # a computed call has left a residual
    return [state.decide(x, j, num_steps, threshold, coefficients, warmup) for j, x in enumerate(inputs)]


def test_rule_crosses_the_threshold_at_known_steps():
    # Identity polynomial, rel 0.1 each step: the sum reaches 0.3 >= 0.25 every third step.
    decisions = replay(chain([0.1] * 9), 0.25, (1.0, 0.0), num_steps=10)
    assert decisions == [True, False, False, True, False, False, True, False, False, True]
    # ... the first and last steps are always computed; warm-up of 5 ("ret steps") computes steps 0-4.
    assert replay(chain([0.01] * 9), 0.25, (1.0, 0.0), 10, warmup=5) == [True] * 5 + [False] * 4 + [True]


def test_rule_uses_the_published_polynomial_in_numpy_order():
    coefficients = WAN_TEACACHE_COEFFICIENTS["wan2.1-t2v-1.3b"]
    rel = [0.02, 0.03, 0.05, 0.01, 0.04, 0.02, 0.06, 0.03, 0.02]
    threshold = 0.3
    poly = np.poly1d(coefficients)
    expected, acc = [True], 0.0
    for j, r in enumerate(rel, start=1):
        if j == len(rel):
            expected.append(True)
            continue
        acc += poly(r)
        expected.append(bool(acc >= threshold))
        if acc >= threshold:
            acc = 0.0
    decisions = replay(chain(rel), threshold, coefficients, num_steps=len(rel) + 1)
    assert decisions == expected and False in decisions and decisions.count(True) > 2


def test_threshold_zero_never_skips():
    assert replay(chain([0.0] * 9), 0.0, WAN_TEACACHE_COEFFICIENTS["wan2.1-t2v-14b"], 10) == [True] * 10


def capture_block_io(model, family):
    """Per transformer call: (blocks' input, blocks' output) hidden states, and TeaCache's cache context."""
    from sr_plugin.adapters import family as registered

    adapter = registered(family)
    blocks = adapter.blocks(model)
    after = model.norm_out if family == "wan" else model.norm_final
    calls = []
    h1 = blocks[0].register_forward_pre_hook(
        lambda m, a, kw: calls.append([(a[0] if a else kw["hidden_states"]).clone(), None]), with_kwargs=True
    )
    h2 = after.register_forward_pre_hook(lambda m, a: calls[-1].__setitem__(1, a[0].clone()))
    return calls, (h1, h2)


def test_skipped_call_reuses_its_own_branch_residual(pair, family):
    """On a skipped call the blocks' output is its input plus the residual of the same branch's last computed
    call: exactly, and never the other branch's (Wan's cond and uncond residuals differ)."""
    pipe, _ = pair
    handle = sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(MIX[family], LINEAR))
    calls, hooks = capture_block_io(pipe.transformer, family)
    run(pipe, family, steps=12)
    for h in hooks:
        h.remove()
    branches = ["cond", "uncond"] if family == "wan" else ["cond_uncond"]
    decisions = [step.cache[b] for step in handle.trace for b in branches if step.model == "large"]
    assert len(calls) == len(decisions) and "skipped" in decisions and decisions.count("computed") > 2
    if family == "cogvideox":
        return  # CogVideoX's norm_final sees text and video tokens; its hidden residual is checked via Wan
    last_residual: dict[str, torch.Tensor] = {}
    for (inp, out), what, branch in zip(calls, decisions, branches * 12):
        if what == "computed":
            last_residual[branch] = out - inp
        else:
            assert torch.equal(out, inp + last_residual[branch])
            other = last_residual["uncond" if branch == "cond" else "cond"]
            assert not torch.allclose(out, inp + other)


def test_decisions_follow_the_rule_on_the_real_modulated_inputs():
    """Replaying the published rule on the time embeddings CogVideoX's blocks really received gives the
    trace's decisions, step for step."""
    from sr_plugin.lab.tiny import tiny_cogvideox

    pipe, _ = tiny_cogvideox()
    handle = sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(MIX["cogvideox"], LINEAR))
    temb = []
    pipe.transformer.transformer_blocks[0].register_forward_pre_hook(
        lambda m, a, kw: temb.append(kw["temb"].clone()), with_kwargs=True
    )
    run(pipe, "cogvideox", steps=12)
    state, expected = TeaCacheState(), []
    for j, x in enumerate(temb):
        expected.append("computed" if state.decide(x, j, 12, MIX["cogvideox"], (1.0, 0.0), 1) else "skipped")
        state.residuals = {"hidden_states": torch.zeros(1)}
    assert [(s.model, s.cache["cond_uncond"]) for s in handle.trace] == [("large", e) for e in expected]
    assert "skipped" in expected


def test_small_model_starts_with_empty_state_and_its_own_coefficients(pair, family):
    pipe, small = pair
    sr = sr_plugin.apply(pipe, small, switch_step=5)
    sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(1e9, COEFFS[family]))  # skip whenever allowed
    run(pipe, family)
    branches = ["cond", "uncond"] if family == "wan" else ["cond_uncond"]
    for r in sr.trace:
        assert set(r.cache) == set(branches)
        first_or_last = r.index in (0, sr.switch_step, STEPS - 1)
        assert set(r.cache.values()) == ({"computed"} if first_or_last else {"skipped"}), r
    names = COEFFS[family]
    from sr_plugin.adapters import adapter_for

    table = adapter_for(pipe).teacache_coefficients
    for model, role in ((pipe.transformer, "large"), (small, "small")):
        block0 = adapter_for(pipe).blocks(model)[0]
        shared = block0._diffusers_hook.get_hook("sr_plugin_teacache_leader").shared
        assert shared.coefficients == table[names[role]] and shared.role == role


def test_no_state_carries_over_from_one_call_to_the_next(pair, family):
    from sr_plugin.lab.tiny import tiny_pair

    def accelerated(p, s):
        sr_plugin.apply(p, s)
        return sr_plugin.accelerate(
            p, teacache=TeaCacheConfig(MIX[family], LINEAR), pab=sr_plugin.PABConfig(2, 2, (0, 1000))
        )

    pipe, small = pair
    handle = accelerated(pipe, small)
    first, trace1 = run(pipe, family), handle.trace
    run(pipe, family, steps=7, seed=3)  # another step count and seed in between
    second, trace2 = run(pipe, family), handle.trace
    fresh_pipe, fresh_small = tiny_pair(family)
    fresh = accelerated(fresh_pipe, fresh_small)
    assert torch.equal(first, second) and trace1 == trace2
    assert torch.equal(run(fresh_pipe, family), first) and fresh.trace == trace1
    assert any("skipped" in step.cache.values() for step in trace1)


@pytest.mark.parametrize(
    "teacache,match",
    [
        (TeaCacheConfig(0.1, "wan2.1-t2v-7b"), "unknown TeaCache coefficients"),
        (TeaCacheConfig(0.1), "matches no published TeaCache coefficients"),
        (TeaCacheConfig(0.1, {"small": "wan2.1-t2v-1.3b"}), "no entry for the large"),
        (TeaCacheConfig(0.1, "wan2.1-t2v-14b", ret_steps=True), "ret_steps"),
    ],
)
def test_bad_teacache_input_is_a_clear_error_before_generation(teacache, match):
    from sr_plugin.lab.tiny import tiny_wan

    pipe, _ = tiny_wan()
    before = dict(vars(pipe))
    with pytest.raises(ValueError, match=match):
        sr_plugin.accelerate(pipe, teacache=teacache)
    assert dict(vars(pipe)) == before
    assert all(
        not getattr(m, "_diffusers_hook", None) or not m._diffusers_hook.hooks for m in pipe.transformer.modules()
    )


def test_negative_threshold_and_other_bad_combinations():
    from sr_plugin.lab.tiny import tiny_cogvideox

    with pytest.raises(ValueError, match=">= 0"):
        TeaCacheConfig(-0.1)
    pipe, small = tiny_cogvideox()
    with pytest.raises(ValueError, match="Wan only"):
        sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(0.1, "cogvideox-5b", ret_steps=True))
    with pytest.raises(ValueError, match="choose one"):
        sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(0.1, "cogvideox-5b"), fbcache=0.1)
    # the small model is checked when the switch is applied after accelerate: nothing is half-applied
    sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(0.1, {"large": "cogvideox-5b"}))
    with pytest.raises(ValueError, match="no entry for the small"):
        sr_plugin.apply(pipe, small)
    assert "_sr_plugin_handle" not in vars(pipe)


def test_modulated_input_for_calibration_is_what_the_blocks_receive(pair, family):
    """The adapter's block-free modulated input equals what TeaCache reads during a real call."""
    from sr_plugin.adapters import adapter_for

    pipe, _ = pair
    adapter = adapter_for(pipe)
    seen = []
    source = adapter.teacache_input(pipe.transformer, False)
    if source[0] == "output_of":
        source[1].register_forward_hook(lambda m, a, out: seen.append(out[source[2]].clone()))
    else:
        adapter.blocks(pipe.transformer)[0].register_forward_pre_hook(
            lambda m, a, kw: seen.append((kw.get("temb") if "temb" in kw else a[2]).clone()), with_kwargs=True
        )
    embeds = []
    pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: embeds.append((kw["timestep"], kw["encoder_hidden_states"])), with_kwargs=True
    )
    run(pipe, family, steps=3)
    for (t, ehs), expected in zip(embeds, seen):
        assert torch.equal(adapter.teacache_modulated_input(pipe.transformer, t, ehs, False), expected)


def test_per_model_thresholds():
    config = TeaCacheConfig({"large": 0.1, "small": 0.3})
    assert config.threshold_for("small") == 0.3
    with pytest.raises(ValueError, match=">= 0"):
        TeaCacheConfig({"large": -1.0})


def test_a_skipped_pass_returns_both_streams_plus_their_cached_residuals():
    """CogVideoX's blocks return (video, text) states. A skipped pass must give the last block's caller each
    stream plus the residual the last computed pass left on it; diffusers 0.42 then drops the text stream,
    so only the blocks' own output can show a lost text residual."""
    from sr_plugin.lab.tiny import tiny_pair

    pipe, _ = tiny_pair("cogvideox")
    accel = sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(MIX["cogvideox"], LINEAR))
    first, last = pipe.transformer.transformer_blocks[0], pipe.transformer.transformer_blocks[-1]
    seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    handles = [
        first.register_forward_pre_hook(
            lambda m, a, kw: seen.append(("in", kw["hidden_states"].clone(), kw["encoder_hidden_states"].clone())),
            with_kwargs=True,
        ),
        last.register_forward_hook(lambda m, a, out: seen.append(("out", out[0].clone(), out[1].clone()))),
    ]
    run(pipe, "cogvideox")
    for h in handles:
        h.remove()
    assert {step.model for step in accel.trace} == {"large"}
    decisions = [step.cache["cond_uncond"] for step in accel.trace]
    assert "skipped" in decisions and "computed" in decisions[1:]
    pairs = [(seen[i], seen[i + 1]) for i in range(0, len(seen), 2)]
    assert len(pairs) == len(decisions)
    residual = None
    for decision, ((_, h_in, e_in), (_, h_out, e_out)) in zip(decisions, pairs):
        if decision == "computed":
            residual = (h_out - h_in, e_out - e_in)
        else:
            assert torch.equal(h_out, h_in + residual[0]) and torch.equal(e_out, e_in + residual[1])
            assert residual[1].abs().max() > 0


def test_a_calibration_beside_the_weights_is_read_once_per_model(monkeypatch):
    """Resolved when each model joins, not again at each check and attach."""
    from sr_plugin.accel import teacache as teacache_module
    from sr_plugin.lab import trained

    reads = []
    real = teacache_module.coefficients_beside_weights
    monkeypatch.setattr(
        teacache_module,
        "coefficients_beside_weights",
        lambda model, ret_steps: reads.append(model) or real(model, ret_steps),
    )
    pipe, small, extra = trained.load("wan")
    sr_plugin.apply(pipe, small, **extra)
    sr_plugin.accelerate(pipe, teacache=0.1)
    assert len(reads) == 2 and reads[0] is not reads[1]
