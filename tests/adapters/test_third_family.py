"""A third family, all in this file: a toy pipeline whose transformer has two block lists (dual-stream blocks
returning (video, text), then single-stream blocks returning (text, video), as Flux-style models do), and its
adapter, registered with `register_family`. The switch, TeaCache, PAB and the trace work on it with no edit
anywhere else."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.modeling_utils import ModelMixin

import sr_plugin
from sr_plugin import PABConfig, TeaCacheConfig
from sr_plugin.adapters import FamilyAdapter, register_family, unregister_family
from sr_plugin.lab.family_tools import FamilyTools, register_tools, unregister_tools

STEPS = 10
TEXT_DIM = 16


# ------------------------------------------------------------------------------------------ the toy model
class ToyAttention(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        return torch.nn.functional.scaled_dot_product_attention(self.q(x), self.k(context), self.v(context))


class DualBlock(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn, self.cross, self.mod, self.text = (
            ToyAttention(dim),
            ToyAttention(dim),
            torch.nn.Linear(dim, dim),
            torch.nn.Linear(dim, dim),
        )

    def forward(self, hidden_states, encoder_hidden_states, temb):
        h = hidden_states + self.attn(hidden_states * (1 + self.mod(temb)[:, None]))
        h = h + self.cross(h, encoder_hidden_states)
        return h, encoder_hidden_states + torch.tanh(self.text(encoder_hidden_states))


class SingleBlock(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attn, self.mod = ToyAttention(dim), torch.nn.Linear(dim, dim)

    def forward(self, hidden_states, encoder_hidden_states, temb):
        n = encoder_hidden_states.shape[1]
        joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        joint = joint + self.attn(joint * (1 + self.mod(temb)[:, None]))
        return joint[:, :n], joint[:, n:]  # text first, as Flux's single blocks


class ToyTransformer(ModelMixin, ConfigMixin, CacheMixin):
    @register_to_config
    def __init__(
        self, in_channels: int = 4, dim: int = 32, text_dim: int = TEXT_DIM, num_dual: int = 2, num_single: int = 2
    ) -> None:
        super().__init__()
        self.proj_in, self.proj_out = torch.nn.Linear(in_channels, dim), torch.nn.Linear(dim, in_channels)
        self.time = torch.nn.Sequential(torch.nn.Linear(16, dim), torch.nn.SiLU(), torch.nn.Linear(dim, dim))
        self.text_proj = torch.nn.Linear(text_dim, dim)
        self.dual_blocks = torch.nn.ModuleList(DualBlock(dim) for _ in range(num_dual))
        self.single_blocks = torch.nn.ModuleList(SingleBlock(dim) for _ in range(num_single))

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict: bool = False):
        b, c, h, w = hidden_states.shape
        freqs = torch.exp(-math.log(1000) * torch.arange(8) / 8)
        angles = timestep.float()[:, None] * freqs[None]
        temb = self.time(torch.cat([angles.sin(), angles.cos()], dim=1))
        x = self.proj_in(hidden_states.flatten(2).transpose(1, 2))
        e = self.text_proj(encoder_hidden_states)
        for block in self.dual_blocks:
            x, e = block(hidden_states=x, encoder_hidden_states=e, temb=temb)
        for block in self.single_blocks:
            e, x = block(hidden_states=x, encoder_hidden_states=e, temb=temb)
        return (self.proj_out(x).transpose(1, 2).reshape(b, c, h, w),)


class ToyPipeline(DiffusionPipeline):
    """CFG as two calls per step, each in its cache context, like WanPipeline; reads pipe.transformer per call."""

    def __init__(self, transformer: ToyTransformer, scheduler: FlowMatchEulerDiscreteScheduler) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)

    @torch.no_grad()
    def __call__(
        self,
        prompt_embeds,
        negative_prompt_embeds,
        num_inference_steps: int = STEPS,
        guidance_scale: float = 4.0,
        seed: int = 0,
        models_by_step: list | None = None,
    ):
        latents = torch.randn((1, 4, 4, 4), generator=torch.Generator().manual_seed(seed))
        self.scheduler.set_timesteps(num_inference_steps)
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(self.scheduler.timesteps):
                model = self.transformer if models_by_step is None else models_by_step[i]
                with model.cache_context("cond"):
                    cond = model(hidden_states=latents, timestep=t.expand(1), encoder_hidden_states=prompt_embeds)[0]
                with model.cache_context("uncond"):
                    uncond = model(
                        hidden_states=latents, timestep=t.expand(1), encoder_hidden_states=negative_prompt_embeds
                    )[0]
                latents = self.scheduler.step(uncond + guidance_scale * (cond - uncond), t, latents, return_dict=False)[
                    0
                ]
                bar.update()
        return latents


# ------------------------------------------------------------------------------------------ its adapter
class ToyAdapter(FamilyAdapter, FamilyTools):
    """The family's adapter and, for the tests' tiny pipeline, its tool description (one class, one file)."""

    name = "Toy"
    key = "toy"
    pipeline_class_names = ("ToyPipeline",)
    transformer_class_name = "ToyTransformer"
    pair_fields = ("in_channels", "text_dim")
    cfg_branches = ("cond", "uncond")

    def pipeline_classes(self) -> tuple[type, ...]:
        return (ToyPipeline,)

    def transformer_class(self) -> type:
        return ToyTransformer

    def denoised(self, scheduler, step_index, timestep, sample, model_output):
        return sample.float() - float(scheduler.sigmas[step_index]) * model_output.float()

    def block_lists(self, model):
        return [model.dual_blocks, model.single_blocks]

    def block_layouts(self, model):
        return [("hidden_states", "encoder_hidden_states"), ("encoder_hidden_states", "hidden_states")]

    def attention_modules(self, model):
        return (
            [(b.attn, "self") for b in model.dual_blocks]
            + [(b.cross, "cross") for b in model.dual_blocks]
            + [(b.attn, "self") for b in model.single_blocks]
        )

    def teacache_input(self, model, ret_steps):
        return ("block_arg", "temb")

    tiny_call = {"num_inference_steps": STEPS}

    def build_tiny(self, seed=0):
        torch.manual_seed(seed)
        large, small = ToyTransformer().eval(), ToyTransformer(num_dual=1, num_single=1).eval()
        pipe = ToyPipeline(large, FlowMatchEulerDiscreteScheduler(shift=3.0))
        pipe.set_progress_bar_config(disable=True)
        return pipe, small


@pytest.fixture
def toy():
    register_family(ToyAdapter)
    register_tools(ToyAdapter)
    pipe, small = ToyAdapter().build_tiny(0)
    text = torch.randn(1, 5, TEXT_DIM, generator=torch.Generator().manual_seed(1))
    yield pipe, small, {"prompt_embeds": text, "negative_prompt_embeds": torch.zeros_like(text)}
    unregister_family("toy")
    unregister_tools("toy")


def test_the_family_is_known_only_while_registered(toy):
    pipe, small, _ = toy
    assert sr_plugin.adapters.adapter_for(pipe).key == "toy"
    unregister_family("toy")
    with pytest.raises(TypeError, match="does not support ToyPipeline"):
        sr_plugin.apply(pipe, small)


def test_the_tools_find_its_tiny_pipeline_in_the_registry(toy):
    """The tiny builders and the benchmarks' family list come from the registry: no list elsewhere to edit."""
    from sr_plugin.lab import bench, tiny

    assert tiny.tiny_families()[-1] == "toy" and tiny.TINY_CALL["toy"] == {"num_inference_steps": STEPS}
    pipe, small = tiny.tiny_pair("toy", seed=0)
    assert isinstance(pipe, ToyPipeline) and len(small.dual_blocks) == 1
    assert torch.equal(pipe.transformer.proj_out.weight, toy[0].transformer.proj_out.weight)  # seeded
    assert bench.teacache("toy").threshold == ToyAdapter.tiny_teacache_threshold
    unregister_family("toy")
    assert "toy" not in tiny.tiny_families()
    with pytest.raises(ValueError, match="unknown family 'toy'"):
        tiny.tiny_pair("toy")


def test_fixed_switch_equals_the_pipeline_choosing_the_model_itself(toy):
    pipe, small, call = toy
    large = pipe.transformer
    expected = pipe(**call, models_by_step=[large] * 4 + [small] * (STEPS - 4))
    handle = sr_plugin.apply(pipe, small, switch_step=4)
    assert torch.equal(pipe(**call), expected)
    assert [r.model for r in handle.trace] == ["large"] * 4 + ["small"] * 6 and handle.switch.reason == "fixed"
    handle.remove()
    adaptive = sr_plugin.apply(pipe, small, delta=0.5)
    pipe(**call)
    k = adaptive.switch_step
    assert k is not None and adaptive.switch.reason in ("delta", "max_switch_step")
    assert [r.model for r in adaptive.trace] == ["large"] * k + ["small"] * (STEPS - k)


def test_teacache_skips_both_lists_and_returns_each_stream_in_each_layout(toy):
    pipe, small, call = toy
    sr_plugin.apply(pipe, small, switch_step=5)
    baseline = pipe(**call)
    accel = sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(0.0, "identity"))
    assert torch.equal(pipe(**call), baseline)  # threshold 0 never skips
    accel.remove()
    accel = sr_plugin.accelerate(pipe, teacache=TeaCacheConfig(0.8, "identity"))
    model = pipe.transformer
    seen: list[Any] = []
    hooks = [
        model.dual_blocks[0].register_forward_pre_hook(
            lambda m, a, kw: seen.append({k: kw[k].clone() for k in ("hidden_states", "encoder_hidden_states")}),
            with_kwargs=True,
        ),
        model.single_blocks[-1].register_forward_hook(lambda m, a, out: seen.append(tuple(o.clone() for o in out))),
    ]
    pipe(**call)
    for h in hooks:
        h.remove()
    assert [r.model for r in accel.trace[:5]] == ["large"] * 5
    decisions = [(r.cache.get("cond"), r.cache.get("uncond")) for r in accel.trace[:5]]
    flat = [d for pair in decisions for d in pair]
    assert "skipped" in flat and "computed" in flat[2:]
    residual: dict[str, dict[str, torch.Tensor]] = {}
    for what, (inputs, (text_out, video_out)), branch in zip(flat, zip(seen[0::2], seen[1::2]), ["cond", "uncond"] * 5):
        if what == "computed":
            residual[branch] = {
                "hidden_states": video_out - inputs["hidden_states"],
                "encoder_hidden_states": text_out - inputs["encoder_hidden_states"],
            }
        else:  # the single blocks' layout: text first
            assert torch.equal(text_out, inputs["encoder_hidden_states"] + residual[branch]["encoder_hidden_states"])
            assert torch.equal(video_out, inputs["hidden_states"] + residual[branch]["hidden_states"])
    assert any(r.model == "small" and r.cache.get("cond") == "skipped" for r in accel.trace[5:])


def test_pab_reuses_per_branch_and_shows_in_the_trace(toy):
    pipe, small, call = toy
    handle = sr_plugin.apply(pipe, small, switch_step=4)
    baseline = pipe(**call)
    accel = sr_plugin.accelerate(pipe, pab=PABConfig(1, 1, (0, 1000)))
    assert torch.equal(pipe(**call), baseline)  # compute every call: exact
    accel.remove()
    sr_plugin.accelerate(pipe, pab=PABConfig(2, 2, (0, 1000)))
    assert not torch.equal(pipe(**call), baseline)
    for r in handle.trace:
        own = r.index if r.model == "large" else r.index - 4
        assert r.attention == {b: "computed" if own % 2 == 0 else "reused" for b in ("cond", "uncond")}


def test_a_family_missing_a_required_member_is_refused_when_registered():
    class HalfWritten(FamilyAdapter):
        name, key = "Half", "half"
        pipeline_class_names, transformer_class_name = ("ToyPipeline",), "ToyTransformer"

        def denoised(self, scheduler, step_index, timestep, sample, model_output):
            return sample

    with pytest.raises(
        TypeError,
        match="HalfWritten cannot be registered: it must define attention_modules, "
        "blocks or block_lists, teacache_input",
    ):
        register_family(HalfWritten)
    assert "half" not in sr_plugin.adapters.family_keys()


def test_the_block_layouts_agree_with_diffusers_own_block_registry():
    """diffusers keeps the same fact for its own blocks in a private registry (hooks._helpers); the adapters
    declare it because a third-party block is not in it. This keeps the two from drifting apart."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    from sr_plugin.lab.tiny import tiny_pair

    for key in ("wan", "cogvideox"):
        pipe, _ = tiny_pair(key)
        adapter = sr_plugin.adapters.family(key)
        for block, layout in adapter.blocks_with_layouts(pipe.transformer):
            meta = TransformerBlockRegistry.get(type(block))
            assert layout.index("hidden_states") == meta.return_hidden_states_index
            if meta.return_encoder_hidden_states_index is None:
                assert layout == ("hidden_states",)
            else:
                assert layout.index("encoder_hidden_states") == meta.return_encoder_hidden_states_index
