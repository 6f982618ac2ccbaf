"""Seeded random sequences of apply / accelerate / remove / calls (plain, interrupted, with a failing callback,
with a refused scheduler, with another pipeline's call in flight inside it) and refused set-ups (an unloaded
small model, accelerations of two pipelines on one shared model, First Block Cache on a one-block small model)
on pipelines "a" and "b" sharing their small model, "c" sharing a's large model, and "d" on its own models,
whose user turns diffusers' First Block Cache on and off on its transformer. After every call the output must
equal, bit for bit, a freshly built pipeline put in the same state; a failing sequence is shrunk and printed.
Half the seeds run Wan, half CogVideoX (whose hand-off maps latents, so a doubled mapping shows). Half the
operations follow from the one before (`FOLLOW`: a call after an interruption, the sharing pipeline's call, a
second switch on the shared small model, ...), so that 200 operations reach the orders in which state leaks: with
any of the state-leak fixes reverted (a small model's per-call state kept on it, a cache context reused across
pipelines, ...), the CI-size run fails.

    SR_SEQUENCE_OPS=5000 python -m pytest tests/project/test_random_sequences.py   # a nightly-size run
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from diffusers import FirstBlockCacheConfig, FlowMatchHeunDiscreteScheduler, HeunDiscreteScheduler

import sr_plugin
from sr_plugin import PABConfig, TeaCacheConfig
from sr_plugin.lab.tiny import TINY_CALL, tiny_pair
from sr_plugin.pipeline.seeded import run_seeded

STEPS = 4
OPS = int(os.environ.get("SR_SEQUENCE_OPS", "200"))
LINEAR = "identity"
SWITCHES = [("switch_step", 2), ("switch_step", 0), ("delta", 0.3)]
ACCELS = {
    "teacache": {"teacache": TeaCacheConfig(1.5, LINEAR)},
    "pab": {"pab": PABConfig(2, 2, (0, 1000))},
    "fbcache": {"fbcache": 0.3},
}
#: The threshold of the First Block Cache "d"'s user enables on its own transformer (skips some blocks).
USER_FBC = 0.3


class Stop(RuntimeError):
    pass


def call(pipe: Any, kind: str = "plain", family: str = "wan", inner: Any = None) -> torch.Tensor:
    """One call; ``inner`` (a function) runs inside it, at its step 1, as another pipeline's call in flight."""

    def callback(p, i, t, kwargs):
        if kind == "interrupted" and i == 1:
            p._interrupt = True
        if kind == "failing" and i == 1:
            raise Stop("the callback failed")
        if inner is not None and i == 1:
            inner()
        return kwargs

    pipe._interrupt = False
    return run_seeded(
        pipe, "a red fox", 0, num_inference_steps=STEPS, callback_on_step_end=callback, **TINY_CALL[family]
    )


@dataclass
class State:
    switch: tuple[str, Any] | None = None
    accel: str | None = None
    user_fbc: bool = False  # diffusers' First Block Cache enabled by the user on the pipeline's transformer


@dataclass
class World:
    """The pipelines under test ("a", and "b" sharing a's small model) with their handles and expected state."""

    family: str = "wan"
    pipes: dict[str, Any] = field(default_factory=dict)
    small: Any = None
    small_d: Any = None
    state: dict[str, State] = field(default_factory=dict)
    sr: dict[str, Any] = field(default_factory=dict)
    accel: dict[str, Any] = field(default_factory=dict)


def build_world(family: str = "wan") -> World:
    world = World(family=family)
    world.pipes["a"], world.small = tiny_pair(family)
    world.pipes["b"], _ = tiny_pair(family, seed=1)
    world.pipes["c"], _ = tiny_pair(family)
    world.pipes["c"].transformer = world.pipes["a"].transformer  # same weights as its own: a fresh "c" matches
    world.pipes["d"], world.small_d = tiny_pair(family, seed=2)
    world.state = {name: State() for name in "abcd"}
    return world


_reference_cache: dict[tuple, torch.Tensor] = {}


def reference(family: str, name: str, state: State, kind: str) -> torch.Tensor:
    """A fresh pipeline (and small model) in ``state``, called once: what the pipeline under test must give."""
    key = (family, name, state.switch, state.accel, state.user_fbc, kind)
    if key not in _reference_cache:
        seed = {"b": 1, "d": 2}.get(name, 0)
        pipe, small = tiny_pair(family, seed=seed)
        if name != "d":
            _, small = tiny_pair(family)
        if state.user_fbc:
            pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=USER_FBC))
        if state.switch is not None:
            sr_plugin.apply(pipe, small, **{state.switch[0]: state.switch[1]})
        if state.accel is not None:
            sr_plugin.accelerate(pipe, **ACCELS[state.accel])
        _reference_cache[key] = call(pipe, kind, family)
    return _reference_cache[key]


#: Operations per pipeline, repeated to weight them: calls after interruptions and failures, and calls of the
#: pipelines sharing a model, are where state leaks between calls and pipelines would show.
KINDS = {
    "a": [
        "apply",
        "apply",
        "apply",
        "remove",
        "accelerate",
        "accelerate",
        "remove_accel",
        "call",
        "call",
        "interrupted",
        "interrupted",
        "failing",
        "bad_scheduler",
        "apply_unloaded",
        "one_block_fbcache",
        "nested",
    ],
    "b": [
        "apply",
        "apply",
        "apply",
        "remove",
        "accelerate",
        "remove_accel",
        "call",
        "call",
        "interrupted",
        "failing",
        "bad_scheduler",
        "apply_unloaded",
        "one_block_fbcache",
        "nested",
    ],
    "c": ["call", "call", "call", "interrupted", "accelerate", "remove_accel"],
    "d": [
        "apply",
        "apply",
        "remove",
        "call",
        "call",
        "interrupted",
        "user_fbc_on",
        "user_fbc_off",
        "one_block_fbcache",
    ],
}


#: What tends to follow an operation (half the time the next one is drawn from here): the sequences in which
#: state could leak. "peer" is a call of the pipeline sharing a model with this one; "sharer_apply" the switch
#: applied on the pipeline sharing its small model.
FOLLOW = {
    "accelerate": ["interrupted", "failing", "call", "peer"],
    "interrupted": ["peer", "peer", "call"],
    "failing": ["peer", "call"],
    "apply": ["call", "nested", "sharer_apply", "nested", "accelerate", "user_fbc_on"],
    "user_fbc_on": ["call", "apply"],
    "user_fbc_off": ["call"],
    "call": ["bad_scheduler", "user_fbc_off", "nested", "interrupted", "peer"],
    "remove": ["call"],
    "remove_accel": ["call", "peer"],
}
#: "d" (its own models, its user toggling First Block Cache): turn it on, call, turn it off, call.
FOLLOW_D = {
    "apply": ["user_fbc_on", "call"],
    "user_fbc_on": ["call"],
    "call": ["user_fbc_off", "call", "interrupted"],
    "user_fbc_off": ["call"],
    "interrupted": ["user_fbc_off", "call"],
    "remove": ["call", "one_block_fbcache"],
    "one_block_fbcache": ["call"],
}
PEER = {"a": "c", "b": "a", "c": "a", "d": "d"}
SHARER = {"a": "b", "b": "a"}


def random_ops(rng: random.Random, n: int) -> list[tuple]:
    """``n`` operations: half the time one that tends to follow the last (`FOLLOW`), else any, on any pipeline."""
    ops: list[tuple] = []
    while len(ops) < n:
        name, kind = None, None
        if ops and rng.random() < 0.5:
            last_name, last_kind, _ = ops[-1]
            follow = rng.choice((FOLLOW_D if last_name == "d" else FOLLOW).get(last_kind, ["call"]))
            name, kind = (PEER[last_name], "call") if follow == "peer" else (last_name, follow)
            if follow == "sharer_apply":
                name, kind = SHARER.get(last_name), "apply"
            if name is None or kind not in KINDS[name]:
                name = None
        if name is None:
            name = rng.choice("aaabbcccdd")
            kind = rng.choice(KINDS[name])
        accel = rng.choice(["teacache", "teacache", "pab", "fbcache"])
        arg = rng.choice(SWITCHES) if kind == "apply" else accel if kind == "accelerate" else None
        ops.append((name, kind, arg))
    return ops


def _check_call(world: World, name: str, kind: str, out: torch.Tensor) -> str | None:
    expected = reference(world.family, name, world.state[name], kind)
    if torch.equal(out, expected):
        return None
    return f"{name} {kind}: output differs from a fresh pipeline by {(out - expected).abs().max().item():.3g}"


def run_ops(ops: list[tuple], family: str = "wan") -> str | None:
    """Run ``ops``; None if every call matched its reference, else what went wrong at which operation."""
    world = build_world(family)
    for i, (name, kind, arg) in enumerate(ops):
        pipe, state = world.pipes[name], world.state[name]
        other = world.state["b" if name == "a" else "a"]  # the pipeline sharing the small model (a and b)
        # the pipeline sharing the large model (a and c): accelerations of two pipelines on one model are refused
        large_peer = world.state.get({"a": "c", "c": "a"}.get(name, ""), State())
        small_id = world.small_d if name == "d" else world.small
        try:
            if kind == "apply":
                if state.switch is not None:
                    with pytest.raises(RuntimeError, match="already called"):
                        sr_plugin.apply(pipe, small_id, **{arg[0]: arg[1]})
                elif other.switch is not None and other.accel is not None and state.accel is not None and name in "ab":
                    # this pipeline's accelerations would land on the shared small model, which carries the other's
                    with pytest.raises(ValueError, match="small transformer already carries sr_plugin accelerations"):
                        sr_plugin.apply(pipe, small_id, **{arg[0]: arg[1]})
                else:
                    world.sr[name] = sr_plugin.apply(pipe, small_id, **{arg[0]: arg[1]})
                    state.switch = arg
            elif kind == "apply_unloaded":
                unloaded = tiny_pair(family)[1].to("meta")
                error = RuntimeError if state.switch is not None else ValueError
                with pytest.raises(error, match="already called|not loaded"):
                    sr_plugin.apply(pipe, unloaded, switch_step=1)
            elif kind == "one_block_fbcache":
                if (
                    state.switch is not None
                    or state.accel is not None
                    or large_peer.accel is not None
                    or state.user_fbc
                ):
                    continue
                handle = sr_plugin.apply(pipe, one_block_small(family), switch_step=1)
                try:
                    with pytest.raises(ValueError, match="First Block Cache needs at least two transformer blocks"):
                        sr_plugin.accelerate(pipe, fbcache=0.3)
                finally:
                    handle.remove()
            elif kind == "remove" and state.switch is not None:
                world.sr.pop(name).remove()
                state.switch = None
            elif kind == "accelerate":
                if state.accel is not None:
                    with pytest.raises(RuntimeError, match="already called"):
                        sr_plugin.accelerate(pipe, **ACCELS[arg])
                elif large_peer.accel is not None:
                    with pytest.raises(ValueError, match="large transformer already carries sr_plugin accelerations"):
                        sr_plugin.accelerate(pipe, **ACCELS[arg])
                elif state.switch is not None and other.switch is not None and other.accel is not None:
                    with pytest.raises(ValueError, match="already carries sr_plugin accelerations"):
                        sr_plugin.accelerate(pipe, **ACCELS[arg])
                elif state.switch is not None and other.switch is not None:
                    continue  # allowed, but the other pipeline could then not accelerate: keep sequences simple
                else:
                    world.accel[name] = sr_plugin.accelerate(pipe, **ACCELS[arg])
                    state.accel = arg
            elif kind == "remove_accel" and state.accel is not None:
                world.accel.pop(name).remove()
                state.accel = None
            elif kind == "user_fbc_on" and not state.user_fbc:
                pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=USER_FBC))
                state.user_fbc = True
            elif kind == "user_fbc_off" and state.user_fbc:
                pipe.transformer.disable_cache()
                state.user_fbc = False
            elif kind in ("call", "interrupted"):
                if large_peer.accel == "fbcache":
                    continue  # known limit: diffusers' own First Block Cache acts for every pipeline using the model
                out = call(pipe, "plain" if kind == "call" else "interrupted", family)
                wrong = _check_call(world, name, kind, out)
                if wrong is not None:
                    return f"op {i} ({wrong})"
            elif kind == "nested":  # b's call runs inside a's (or a's inside b's), both in flight together
                inner_name = "b" if name == "a" else "a"
                inner_pipe, inner_state = world.pipes[inner_name], world.state[inner_name]
                if world.state["c"].accel == "fbcache":
                    continue  # (the known First Block Cache limit above: c's cache acts on a's calls too)
                inner_out: list[torch.Tensor] = []
                if state.switch is not None and inner_state.switch is not None:  # the shared small model is busy
                    with pytest.raises(RuntimeError, match="small transformer is in use by a call of another"):
                        call(
                            pipe,
                            "plain",
                            family,
                            inner=lambda o=inner_out, p=inner_pipe: o.append(call(p, "plain", family)),
                        )
                    continue
                out = call(
                    pipe, "plain", family, inner=lambda o=inner_out, p=inner_pipe: o.append(call(p, "plain", family))
                )
                for who, got in ((inner_name, inner_out[0]), (name, out)):
                    wrong = _check_call(world, who, "call", got)
                    if wrong is not None:
                        return f"op {i} (nested: {wrong})"
            elif kind == "failing":
                with pytest.raises(Stop):
                    call(pipe, "failing", family)
            elif kind == "bad_scheduler":
                original = pipe.scheduler
                pipe.scheduler = (
                    FlowMatchHeunDiscreteScheduler(shift=3.0)
                    if family == "wan"
                    else HeunDiscreteScheduler(prediction_type="v_prediction")
                )
                try:
                    if state.switch is not None:
                        with pytest.raises(ValueError, match="order 2"):
                            call(pipe, "plain", family)
                        handle = world.sr[name]  # a refused call reports no steps, not the last call's
                        if handle.switch_step is not None or handle.trace:
                            return f"op {i} ({name} {kind}): the handle still describes the call before"
                finally:
                    pipe.scheduler = original
        except (Exception, pytest.fail.Exception) as err:  # noqa: BLE001 (an unexpected error or a missing refusal is a finding)
            return f"op {i} ({name} {kind} {arg}): {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return None


def one_block_small(family: str) -> Any:
    """A small model of the family with one block (First Block Cache needs two)."""
    from sr_plugin.lab.tiny import tiny_cogvideox_transformer, tiny_wan_transformer

    if family == "wan":
        return tiny_wan_transformer(num_layers=1, num_heads=2, seed=5)
    return tiny_cogvideox_transformer(num_layers=1, num_heads=2, rotary=False, seed=5)


def shrink(ops: list[tuple], family: str = "wan") -> list[tuple]:
    """Drop operations one at a time while the sequence still fails (a greedy delta-debugging pass)."""
    changed = True
    while changed:
        changed = False
        for i in range(len(ops)):
            candidate = ops[:i] + ops[i + 1 :]
            if run_ops(candidate, family) is not None:
                ops, changed = candidate, True
                break
    return ops


@pytest.mark.parametrize("family,seed", [("wan", 0), ("wan", 1), ("cogvideox", 2), ("cogvideox", 3)])
def test_random_sequences_match_fresh_pipelines(family, seed):
    ops = random_ops(random.Random(seed), OPS // 4)
    failure = run_ops(ops, family)
    if failure is not None:
        small = shrink(ops, family) if os.environ.get("SR_SEQUENCE_SHRINK", "1") == "1" else ops
        pytest.fail(f"{failure}\nshrunk to {len(small)} operations: {small}\nwhich gives: {run_ops(small, family)}")


#: Sequences that found bugs (kept whatever the random generator draws): a shared large model after an
#: interrupted or failed TeaCache call of the other pipeline; an apply refused for an unloaded small model; a
#: user's First Block Cache turned off after it was mirrored; a call in flight on a busy shared small model.
REGRESSIONS = [
    [
        ("d", "apply", ("switch_step", 2)),
        ("d", "user_fbc_on", None),
        ("d", "call", None),
        ("d", "user_fbc_off", None),
        ("d", "call", None),
    ],
    [
        ("b", "apply", ("switch_step", 2)),
        ("a", "apply", ("switch_step", 0)),
        ("a", "nested", None),
        ("b", "call", None),
    ],
    [("a", "accelerate", "teacache"), ("a", "interrupted", None), ("c", "call", None)],
    [("a", "accelerate", "teacache"), ("a", "failing", None), ("c", "call", None)],
    [
        ("a", "accelerate", "pab"),
        ("a", "apply_unloaded", None),
        ("a", "call", None),
        ("a", "apply", ("switch_step", 2)),
        ("a", "call", None),
        ("a", "remove", None),
        ("a", "call", None),
    ],
    [
        ("a", "apply", ("switch_step", 2)),
        ("b", "apply", ("switch_step", 0)),
        ("a", "accelerate", "teacache"),
        ("b", "call", None),
        ("a", "bad_scheduler", None),
        ("a", "call", None),
        ("b", "interrupted", None),
    ],
]


@pytest.mark.parametrize("ops", REGRESSIONS, ids=range(len(REGRESSIONS)))
def test_sequences_that_found_bugs(ops):
    assert run_ops(ops) is None
