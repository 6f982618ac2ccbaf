"""The facets of a pipeline family, each what one part of the core reads: which pipelines and models it is
(`Identity`), how the small model takes the large one's place (`Handover`), how far a step is from the clean video
(`NoiseLevels`), where its blocks and attention layers are (`Blocks`) and where TeaCache reads its input
(`TeaCacheInputs`). `FamilyAdapter` (in `base.py`) is all of them; each facet names the members a family must write
(``required``), checked when the family registers. The lab's and the tests' tools of a family (tiny pipelines,
published sizes) live apart, in `sr_plugin.lab.family_tools`."""

from __future__ import annotations

from typing import Any

import torch

from .handoff import Handoff


class Identity:
    """Which pipelines and transformers the family is, and whether a pair of its models can cooperate."""

    required: tuple[str, ...] = ("name", "key", "pipeline_class_names", "transformer_class_name")

    #: Short name shown in errors and traces.
    name: str = ""
    #: Lower-case key used on the command line and in the registry ("wan", "cogvideox").
    key: str = ""
    #: diffusers class names of the pipelines and transformer this adapter serves.
    pipeline_class_names: tuple[str, ...] = ()
    transformer_class_name: str = ""
    #: Transformer config fields that must agree between the large and the small model.
    pair_fields: tuple[str, ...] = ()

    def pipeline_classes(self) -> tuple[type, ...]:
        import diffusers

        return tuple(getattr(diffusers, n) for n in self.pipeline_class_names)

    def transformer_class(self) -> type:
        import diffusers

        return getattr(diffusers, self.transformer_class_name)

    def serves(self, pipe: Any) -> bool:
        return isinstance(pipe, self.pipeline_classes())

    def check_pipeline(self, pipe: Any) -> None:
        """Raise if this pipeline instance is set up in a way the hand-off cannot serve."""

    def check_pair(self, large: Any, small: Any) -> None:
        """Raise a clear error if ``small`` cannot stand in for ``large``."""
        cls = self.transformer_class()
        if not isinstance(small, cls):  # narrows nothing: the models are read through their configs
            raise TypeError(
                f"the small transformer must be a {cls.__name__} for a {self.name} pipeline, got {type(small).__name__}"
            )
        pair: tuple[Any, Any] = (large, small)  # (the isinstance check above narrows small to `object`)
        for field in self.pair_fields:
            a, b = (model.config.get(field) for model in pair)
            if _norm(a) != _norm(b):
                raise ValueError(
                    f"the small transformer's {field}={b!r} does not match the large transformer's {a!r}; "
                    "the two models must share latent channels, patch size and text embedding width"
                )


class Handover:
    """How the small model takes the large one's place: the step boundary, the mapping of its inputs and outputs,
    the pipeline's other slots, what it cannot take."""

    #: The family's name (`Identity.name`), for errors.
    name: str

    required: tuple[str, ...] = ()

    #: The ``cache_context`` names of one step's transformer calls: ("cond", "uncond") for CFG as two calls,
    #: ("cond_uncond",) for one batched call. Traces and per-branch caches are keyed on these.
    cfg_branches: tuple[str, ...] = ("cond", "uncond")
    #: Whether the pipeline ends each step with ``progress_bar.update()`` after its step-end callback (Wan and
    #: CogVideoX do): the switch then swaps models there, so the callback still sees the step's own model.
    #: Otherwise it swaps right after ``scheduler.step``.
    step_ends_with_progress_update: bool = False

    def guided(self, outputs: list[torch.Tensor], guidance_scale: float) -> torch.Tensor:
        """One step's guided prediction from its transformer calls' outputs (in call order), combined as the
        pipeline combines them: here CFG as two calls, the conditional one first (Wan)."""
        if len(outputs) == 1:
            return outputs[0]
        cond, uncond = outputs
        return uncond + guidance_scale * (cond - uncond)

    def latest_switch_step(self, pipe: Any, timesteps: list[float]) -> tuple[int, str] | None:
        """The step by which the small model must have taken over in this call, and why (a pipeline whose
        large model cannot run all steps), or None."""
        return None

    def expert_slots(self, pipe: Any) -> tuple[str, ...]:
        """Pipeline attributes besides ``transformer`` that the pipeline calls for some steps (Wan2.2's
        low-noise expert ``transformer_2``): after the switch the small model stands in them too."""
        return ()

    def check_prompt_embeds(self, small: Any, prompt_embeds: torch.Tensor) -> None:
        """Raise if the small model cannot take this call's text embeddings (checked right after the pipeline
        encodes the prompt, before its first step)."""

    #: Why para-attn's context-parallel adapter for this family cannot be used, or None if it can.
    para_attn_refusal: str | None = None

    #: Names of the family-only hand-off options (`apply(..., family_options={...})`); none by default.
    option_names: tuple[str, ...] = ()

    def make_handoff(self, pipe: Any, small: Any, **options: Any) -> Handoff:
        """Build the mapping used while the small model runs. Unknown options are an error."""
        if any(v is not None for v in options.values()):
            given = ", ".join(k for k, v in options.items() if v is not None)
            verb = "applies" if "," not in given else "apply"
            raise TypeError(
                f"{given} only {verb} to pipelines whose two models use different latent spaces "
                f"(CogVideoX); a {self.name} pair hands over unchanged"
            )
        return Handoff()


class NoiseLevels:
    """How far a step is from the clean video: the denoised estimate x0 the switch observes, and the noise level
    a schedule's end is read against."""

    required: tuple[str, ...] = ("denoised",)

    def check_scheduler(self, scheduler: Any) -> None:
        """Raise if the x0 estimate cannot be read from this scheduler."""

    def denoised(
        self, scheduler: Any, step_index: int, timestep: float, sample: torch.Tensor, model_output: torch.Tensor
    ) -> torch.Tensor:
        """The denoised estimate x0 after ``step_index`` from the guided model output."""
        raise NotImplementedError

    def noise_level(self, scheduler: Any, step_index: int) -> tuple[str, float] | None:
        """The noise level at the start of ``step_index`` of the last call, by the family's own measure (flow
        matching: ("sigma", sigma); v-prediction: ("abar", alphas_cumprod)): where a switch fell, in the
        terms the schedule is written in. None if the family does not say."""
        return None


class Blocks:
    """Where the transformer blocks and the attention layers are, and what the blocks return: what regional
    compilation and every cache work on."""

    required: tuple[str, ...] = ("attention_modules",)

    #: What the blocks return, by argument name: ``("hidden_states",)`` for a tensor, or a tuple's layout
    #: such as ``("hidden_states", "encoder_hidden_states")``. Per block list with `block_layouts`.
    block_layout: tuple[str, ...] = ("hidden_states",)

    def block_lists(self, model: Any) -> list[torch.nn.ModuleList]:
        """The model's block lists in call order (one for Wan and CogVideoX; two for dual- then single-stream
        models). Default: the single list `blocks` gives."""
        return [self.blocks(model)]

    def block_layouts(self, model: Any) -> list[tuple[str, ...]]:
        """The return layout of each block list (default: `block_layout` for all)."""
        return [self.block_layout] * len(self.block_lists(model))

    def blocks(self, model: Any) -> Any:
        """Every transformer block, in call order (regional compilation and block caches work on these).
        Single-list families override this; others override `block_lists`."""
        if type(self).block_lists is Blocks.block_lists:
            raise NotImplementedError(f"{type(self).__name__} must define blocks or block_lists")
        return [b for blocks in self.block_lists(model) for b in blocks]

    def blocks_with_layouts(self, model: Any) -> list[tuple[torch.nn.Module, tuple[str, ...]]]:
        return [
            (b, layout) for blocks, layout in zip(self.block_lists(model), self.block_layouts(model)) for b in blocks
        ]

    def attention_modules(self, model: Any) -> list[tuple[torch.nn.Module, str]]:
        """``(module, "self" | "cross")`` for every attention layer Pyramid Attention Broadcast may reuse."""
        raise NotImplementedError


class TeaCacheInputs:
    """Where TeaCache reads the timestep-modulated input, and the published coefficients."""

    required: tuple[str, ...] = ("teacache_input",)

    #: TeaCache's published rescale polynomials (numpy poly1d order, highest degree first), by name.
    teacache_coefficients: dict[str, tuple[float, ...]] = {}

    def teacache_input(self, model: Any, ret_steps: bool) -> tuple[Any, ...]:
        """Where TeaCache reads the timestep-modulated input: ``("block_arg", name)`` of the first block's
        arguments, or ``("output_of", submodule, index)``."""
        raise NotImplementedError

    def teacache_modulated_input(
        self, model: Any, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor, ret_steps: bool
    ) -> torch.Tensor:
        """TeaCache's modulated input for ``timestep`` without running the blocks (to calibrate thresholds)."""
        raise NotImplementedError

    def teacache_preset(self, model: Any, ret_steps: bool) -> str | None:
        """The published coefficient set for this model's config, or None if it matches none."""
        return None


def _norm(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
