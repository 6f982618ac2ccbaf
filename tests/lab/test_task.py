"""The task and its evaluator: ground truth scores 100%, every kind of wrong attribute is caught, the held-out
set is fixed and never trained on, bad prompts are refused with the vocabulary."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sr_plugin.lab import evaluate, task


def test_ground_truth_scores_every_attribute_right():
    pairs = task.held_out()
    scores = [evaluate.score_video(task.render(p, s), p) for p, s in pairs]
    assert evaluate.summarize(scores) == {"prompt_accuracy": 100.0, "attribute_accuracy": 100.0}
    # also through uint8 frames and a list of frames, as pipelines return them
    p, s = pairs[0]
    frames = (task.render(p, s) * 255).round().astype(np.uint8)
    assert evaluate.score_video(list(frames), p).right


def _other(values, current, avoid=()):
    return next(v for v in values if v != current and v not in avoid)


@pytest.mark.parametrize("attribute", ["colour", "shape", "direction"])
def test_a_wrong_attribute_is_caught_and_only_that_one(attribute):
    for prompt, seed in task.held_out()[:12]:
        a, b = task.parse(prompt)
        if attribute == "colour":
            wrong = dataclasses.replace(a, colour=_other(task.COLOURS, a.colour, avoid=(b.colour,)))
        elif attribute == "shape":
            wrong = dataclasses.replace(a, shape=_other(task.SHAPES, a.shape))
        else:
            wrong = dataclasses.replace(a, direction=_other(task.DIRECTIONS, a.direction))
        video = task.render(task.compose((wrong, b)), seed)
        score = evaluate.score_video(video, prompt)
        first, second = score.objects
        assert not score.right
        assert second.right  # the untouched object is still right
        if attribute == "colour":  # a missing colour fails all three of its attributes
            assert (first.colour, first.shape, first.direction) == (False, False, False)
        elif attribute == "shape":
            assert first.colour and first.direction and not first.shape and first.seen_shape == wrong.shape
        else:
            assert first.colour and first.shape and not first.direction and first.seen_direction == wrong.direction


def test_swapped_bindings_a_still_video_and_a_blank_video_are_caught():
    prompt, seed = next(
        (p, s)
        for p, s in task.held_out()
        if len({o.shape for o in task.parse(p)}) == 2 and len({o.direction for o in task.parse(p)}) == 2
    )
    a, b = task.parse(prompt)
    swapped = (
        dataclasses.replace(a, shape=b.shape, direction=b.direction),
        dataclasses.replace(b, shape=a.shape, direction=a.direction),
    )
    score = evaluate.score_video(task.render(task.compose(swapped), seed), prompt)
    assert [(o.colour, o.shape, o.direction) for o in score.objects] == [(True, False, False)] * 2

    video = task.render(prompt, seed)
    still = np.repeat(video[:1], task.NUM_FRAMES, axis=0)
    assert [o.direction for o in evaluate.score_video(still, prompt).objects] == [False, False]
    assert [o.colour for o in evaluate.score_video(np.zeros_like(video), prompt).objects] == [False, False]
    # a washed-out (grey) video has no task colour
    assert not evaluate.score_video(np.full_like(video, 0.5), prompt).objects[0].colour


def test_fidelity_uses_psnr_and_ssim():
    prompt, seed = task.held_out()[0]
    video = task.render(prompt, seed)
    assert evaluate.fidelity(video, video) == (float("inf"), 1.0)
    noisy = np.clip(video + np.random.default_rng(0).normal(0, 0.05, video.shape), 0, 1).astype(np.float32)
    noisier = np.clip(video + np.random.default_rng(0).normal(0, 0.2, video.shape), 0, 1).astype(np.float32)
    (p1, s1), (p2, s2) = evaluate.fidelity(noisy, video), evaluate.fidelity(noisier, video)
    assert 20 < p1 < 40 and p2 < p1 and s2 < s1 < 1
    with pytest.raises(ValueError, match="differ in shape"):
        evaluate.fidelity(video[:4], video)


def test_held_out_set_is_fixed_and_never_in_training():
    pairs = task.held_out()
    assert len(pairs) == task.HELD_OUT_SIZE >= 64 and pairs == task.held_out()
    assert len({p for p, _ in pairs}) == len(pairs) and len({s for _, s in pairs}) == len(pairs)
    held_scenes = {frozenset(task.parse(p)) for p, _ in pairs}
    training = task.training_prompts()
    assert not {frozenset(task.parse(p)) for p in training} & held_scenes
    assert len(training) == len(task.all_prompts()) - 2 * len(pairs)  # each held-out scene in both orders
    # the object order of a held-out prompt, reversed, is not in training either
    a, b = task.parse(pairs[0][0])
    assert task.compose((b, a)) not in training


def test_rendering_is_deterministic_and_seeded():
    prompt, seed = task.held_out()[3]
    assert np.array_equal(task.render(prompt, seed), task.render(prompt, seed))
    assert not np.array_equal(task.render(prompt, seed), task.render(prompt, seed + 1))


@pytest.mark.parametrize(
    "prompt,message",
    [
        ("a purple square moving left and a red circle moving up", "outside the task's vocabulary: 'purple'"),
        ("a red fox runs across a snowy field", "The vocabulary is: a, moving, and, red"),
        ("a red square moving left", "does not follow the task's grammar"),
        ("a red square moving left and a red circle moving up", "both objects the colour red"),
        ("a red left moving square and a blue circle moving up", "does not follow the task's grammar"),
    ],
)
def test_prompts_outside_the_task_are_refused_with_the_vocabulary(prompt, message):
    with pytest.raises(ValueError, match=message):
        task.parse(prompt)
    with pytest.raises(ValueError):
        evaluate.score_video(np.zeros((task.NUM_FRAMES, task.HEIGHT, task.WIDTH, 3)), prompt)
