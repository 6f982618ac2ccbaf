"""The shipped text encoders carry which shape and direction belong to which colour (the pairing a random
frozen encoder loses, docs/trained-families.md): a linear probe from each colour token's embedding, as the pipeline
makes it, recovers its own object's shape and direction on held-out prompts. Wan's encoder also gives each shape
and direction word its own clause (`task_encoder.COPY_RULES`), and no encoder gives a filler word anything."""

from __future__ import annotations

import pytest
import torch

from sr_plugin.lab import task, trained

#: Token positions of the two colour words: "a <colour> <shape> moving <direction> and a <colour> ...".
COLOUR_POSITIONS = (1, 7)
SHAPE_POSITIONS = (2, 8)
DIRECTION_POSITIONS = (4, 10)
#: Training prompts the probe is fitted on (every 8th, in order: all words and pairings occur).
PROBE_FIT_STRIDE = 8
#: The issue's bar: both colour tokens of a held-out prompt probed right, for at least this share of prompts.
MIN_PROMPTS_RIGHT = 0.95


def token_embeddings(pipe, prompts: list[str], positions: tuple[int, ...] = COLOUR_POSITIONS) -> torch.Tensor:
    """[len(prompts), len(positions), width]: those tokens' embeddings, as `encode_prompt` gives them."""
    with torch.no_grad():
        embeds = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, max_sequence_length=trained.MAX_SEQUENCE_LENGTH, device="cpu"
        )[0]
    return embeds[:, list(positions)].float()


def colour_token_embeddings(pipe, prompts: list[str]) -> torch.Tensor:
    return token_embeddings(pipe, prompts, COLOUR_POSITIONS)


def labels(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    objects = [task.parse(p) for p in prompts]
    shape = torch.tensor([[task.SHAPES.index(o.shape) for o in objs] for objs in objects])
    direction = torch.tensor([[list(task.DIRECTIONS).index(o.direction) for o in objs] for objs in objects])
    return shape, direction


def colour_labels(prompts: list[str]) -> torch.Tensor:
    return torch.tensor([[list(task.COLOURS).index(o.colour) for o in task.parse(p)] for p in prompts])


def probed_right(
    pipe,
    positions: tuple[int, ...],
    attributes: dict[str, tuple[torch.Tensor, torch.Tensor, int]],
    fit: list[str],
    held: list[str],
) -> torch.Tensor:
    """Per held-out prompt: every probe right on both objects' tokens at ``positions``."""
    x_fit, x_held = token_embeddings(pipe, fit, positions), token_embeddings(pipe, held, positions)
    width = x_fit.shape[-1]
    flat = lambda t: t.reshape(-1, width)  # noqa: E731
    right = torch.ones(len(held) * len(positions), dtype=torch.bool)
    for y_fit, y_held, classes in attributes.values():
        probe = fit_probe(flat(x_fit), y_fit.reshape(-1), classes)
        right &= probe_right(probe, flat(x_held), y_held.reshape(-1))
    return right.reshape(len(held), len(positions)).all(dim=1)


def fit_probe(x: torch.Tensor, y: torch.Tensor, classes: int) -> torch.Tensor:
    """A linear probe (least squares onto one-hot targets, with a bias column, lightly ridged)."""
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    target = torch.nn.functional.one_hot(y, classes).double()
    gram = x1.T @ x1 + 1e-3 * torch.eye(x1.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, x1.T @ target)


def probe_right(weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x1 = torch.cat([x, torch.ones(len(x), 1)], dim=1).double()
    return (x1 @ weights).argmax(dim=1) == y


def encoding_pipeline(family: str):
    """The family's pipeline around its shared encoder and tokenizer (the transformer and VAE are not used)."""
    return trained.build_pipeline(
        family, "large", trained.transformer(family, "small"), trained.vae(family), trained.text_encoder(family)
    )


@pytest.mark.parametrize("family", trained.FAMILY_NAMES)
def test_a_linear_probe_recovers_each_colours_own_shape_and_direction(family):
    pipe = encoding_pipeline(family)
    fit = task.training_prompts()[::PROBE_FIT_STRIDE]
    held = [p for p, _ in task.held_out()]
    x_fit, x_held = colour_token_embeddings(pipe, fit), colour_token_embeddings(pipe, held)
    (shape_fit, dir_fit), (shape_held, dir_held) = labels(fit), labels(held)
    width = x_fit.shape[-1]
    flat = lambda t: t.reshape(-1, width)  # noqa: E731
    shape_probe = fit_probe(flat(x_fit), shape_fit.reshape(-1), len(task.SHAPES))
    dir_probe = fit_probe(flat(x_fit), dir_fit.reshape(-1), len(task.DIRECTIONS))
    right = (
        (
            probe_right(shape_probe, flat(x_held), shape_held.reshape(-1))
            & probe_right(dir_probe, flat(x_held), dir_held.reshape(-1))
        )
        .reshape(len(held), 2)
        .all(dim=1)
    )
    assert right.double().mean() >= MIN_PROMPTS_RIGHT, f"{int(right.sum())} of {len(held)} held-out prompts"


def test_wans_shape_and_direction_words_carry_their_own_clause():
    """Wan's cross-attention reads the text as a set: a bare shape word would name a shape without saying whose."""
    pipe = encoding_pipeline("wan")
    fit = task.training_prompts()[::PROBE_FIT_STRIDE]
    held = [p for p, _ in task.held_out()]
    (shape_fit, dir_fit), (shape_held, dir_held) = labels(fit), labels(held)
    colours = (colour_labels(fit), colour_labels(held), len(task.COLOURS))
    shape_words = probed_right(
        pipe, SHAPE_POSITIONS, {"colour": colours, "direction": (dir_fit, dir_held, len(task.DIRECTIONS))}, fit, held
    )
    direction_words = probed_right(
        pipe, DIRECTION_POSITIONS, {"colour": colours, "shape": (shape_fit, shape_held, len(task.SHAPES))}, fit, held
    )
    assert shape_words.double().mean() >= MIN_PROMPTS_RIGHT, f"shape words: {int(shape_words.sum())} of {len(held)}"
    assert direction_words.double().mean() >= MIN_PROMPTS_RIGHT, (
        f"direction words: {int(direction_words.sum())} of {len(held)}"
    )


@pytest.mark.parametrize("family", trained.FAMILY_NAMES)
def test_no_filler_word_gets_a_copy(family):
    """The copy heads' fallbacks land on words they do not copy: "a", "moving", "and" and the end token carry
    only themselves (a copy there would tell the two objects' slots apart, or leak one object's words)."""
    from sr_plugin.lab import task_encoder

    pipe = encoding_pipeline(family)
    prompts = [p for p, _ in task.held_out()]
    embeds = token_embeddings(pipe, prompts, tuple(range(12)))
    fillers = [
        i for i, word in enumerate(task.TEMPLATE.split() + ["</s>"]) if not word.startswith("<") or word == "</s>"
    ]
    copies = embeds[:, fillers, len(task_encoder.TOKENS) :]
    assert fillers == [0, 3, 5, 6, 9, 11] and copies.abs().max() < 1e-6


def test_the_probe_fails_on_an_encoder_that_loses_the_pairing():
    """The probe can fail: with the copy heads zeroed (each colour token carries only its colour) it is at chance."""
    pipe = encoding_pipeline("wan")
    with torch.no_grad():
        pipe.text_encoder.encoder.block[0].layer[0].SelfAttention.o.weight.zero_()
    fit = task.training_prompts()[::PROBE_FIT_STRIDE]
    held = [p for p, _ in task.held_out()]
    x_fit, x_held = colour_token_embeddings(pipe, fit), colour_token_embeddings(pipe, held)
    (shape_fit, _), (shape_held, _) = labels(fit), labels(held)
    probe = fit_probe(x_fit.reshape(-1, x_fit.shape[-1]), shape_fit.reshape(-1), len(task.SHAPES))
    accuracy = probe_right(probe, x_held.reshape(-1, x_held.shape[-1]), shape_held.reshape(-1)).double().mean()
    assert accuracy < 0.5
