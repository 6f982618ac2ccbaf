"""The procedural prompt-to-video task the shipped model families are trained on and scored by.

A prompt names two objects, each with a colour, a shape and a motion direction:
``"a red square moving left and a blue circle moving up"``. Its video is rendered deterministically from
the prompt and a seed (the seed places the objects): 9 frames of 32 x 32 pixels, black background, the two
objects (11 pixels across) gliding 6 pixels in their directions without touching. Getting a prompt right means
binding each
colour to its shape and its direction: the composition mistakes a small model makes (a swapped shape, a
swapped or missing motion) are visible and countable (`sr_plugin.lab.evaluate`).

A fixed held-out set of scenes (`held_out`) is never used in training: the training prompts exclude every
prompt describing a held-out scene, in either object order.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

#: Object colours (RGB in [0, 1]); all have a channel at 1, so an object's hue survives dimming at its edges.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
#: Unit motion per direction in (x, y) image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
FILLER_WORDS: tuple[str, ...] = ("a", "moving", "and")
VOCABULARY: tuple[str, ...] = FILLER_WORDS + tuple(COLOURS) + SHAPES + tuple(DIRECTIONS)
TEMPLATE = "a <colour> <shape> moving <direction> and a <colour> <shape> moving <direction>"

#: Video geometry. 9 frames map to 3 latent frames under the 4x temporal compression of both VAEs.
NUM_FRAMES = 9
HEIGHT = WIDTH = 32
#: Every shape fits a box of this side (pixels); each object travels TRAVEL pixels over the clip.
OBJECT_SIZE = 11.0
TRAVEL = 6.0
#: Smallest gap between the two objects' boxes at any frame (pixels).
GAP = 1.0
#: Rendering supersampling factor (anti-aliased edges).
SUPERSAMPLE = 4
HELD_OUT_SIZE = 64
HELD_OUT_SEED = 20261126
#: Seeds of the held-out (prompt, seed) pairs: HELD_OUT_FIRST_SEED + index.
HELD_OUT_FIRST_SEED = 1_000_000


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    direction: str

    def words(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


def compose(objects: tuple[ObjectSpec, ObjectSpec]) -> str:
    """The prompt for two objects."""
    return " and ".join(o.words() for o in objects)


_PROMPT_RE = re.compile(r"^a (\w+) (\w+) moving (\w+) and a (\w+) (\w+) moving (\w+)$")


def parse(prompt: str) -> tuple[ObjectSpec, ObjectSpec]:
    """The two objects a task prompt describes; a ValueError that names the problem otherwise."""
    if not isinstance(prompt, str):
        raise ValueError(f"a task prompt must be a string, got {type(prompt).__name__}")
    words = prompt.strip().lower().split()
    unknown = sorted({w for w in words if w not in VOCABULARY})
    if unknown:
        punctuation = any(not w.isalpha() for w in unknown)
        raise ValueError(
            f"the prompt {prompt!r} uses words outside the task's vocabulary: {', '.join(map(repr, unknown))}"
            f"{' (the task has no punctuation)' if punctuation else ''}. The vocabulary is: {', '.join(VOCABULARY)}; "
            f"a prompt reads '{TEMPLATE}'"
        )
    match = _PROMPT_RE.match(" ".join(words))
    if (
        match is None
        or match.group(1) not in COLOURS
        or match.group(4) not in COLOURS
        or match.group(2) not in SHAPES
        or match.group(5) not in SHAPES
        or match.group(3) not in DIRECTIONS
        or match.group(6) not in DIRECTIONS
    ):
        raise ValueError(
            f"the prompt {prompt!r} does not follow the task's grammar: '{TEMPLATE}' "
            f"(colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)}; "
            f"directions: {', '.join(DIRECTIONS)})"
        )
    a = ObjectSpec(match.group(1), match.group(2), match.group(3))
    b = ObjectSpec(match.group(4), match.group(5), match.group(6))
    if a.colour == b.colour:
        raise ValueError(
            f"the prompt {prompt!r} gives both objects the colour {a.colour}; the task's two objects "
            "have different colours (that is how a video is scored)"
        )
    return a, b


def all_objects() -> list[ObjectSpec]:
    return [ObjectSpec(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]


def all_prompts() -> list[str]:
    """Every valid prompt (ordered pairs of objects with different colours): 4,320."""
    objs = all_objects()
    return [compose((a, b)) for a, b in itertools.product(objs, objs) if a.colour != b.colour]


def _scene(prompt: str) -> frozenset[ObjectSpec]:
    return frozenset(parse(prompt))


def held_out() -> list[tuple[str, int]]:
    """The fixed held-out (prompt, seed) pairs: HELD_OUT_SIZE scenes chosen once with a fixed seed."""
    prompts = all_prompts()
    rng = np.random.default_rng(HELD_OUT_SEED)
    chosen: list[str] = []
    scenes: set[frozenset[ObjectSpec]] = set()
    for i in rng.permutation(len(prompts)):
        scene = _scene(prompts[i])
        if scene not in scenes:
            scenes.add(scene)
            chosen.append(prompts[i])
        if len(chosen) == HELD_OUT_SIZE:
            break
    return [(p, HELD_OUT_FIRST_SEED + i) for i, p in enumerate(chosen)]


#: Validation pairs: training prompts drawn with this seed, each with seed VALIDATION_FIRST_SEED + i (the held-out
#: pairs use 1,000,000 + i): where settings are chosen, so that the held-out pairs stay for reporting them.
VALIDATION_PROMPT_SEED = 7
VALIDATION_FIRST_SEED = 2_000_000


def validation(n: int = HELD_OUT_SIZE) -> list[tuple[str, int]]:
    """``n`` (prompt, seed) pairs of training prompts with seeds no training run or held-out pair uses."""
    import random

    if not 1 <= n <= HELD_OUT_SIZE:
        raise ValueError(f"the validation set has {HELD_OUT_SIZE} pairs, asked for {n}")
    prompts = random.Random(VALIDATION_PROMPT_SEED).sample(training_prompts(), HELD_OUT_SIZE)[:n]
    return [(p, VALIDATION_FIRST_SEED + i) for i, p in enumerate(prompts)]


def training_prompts() -> list[str]:
    """Every prompt whose scene is not held out, in either object order."""
    excluded = {_scene(p) for p, _ in held_out()}
    return [p for p in all_prompts() if _scene(p) not in excluded]


# ----------------------------------------------------------------------------------------------- rendering
def shape_coverage(
    shape: str, cx: float, cy: float, height: int = HEIGHT, width: int = WIDTH, supersample: int = SUPERSAMPLE
) -> np.ndarray:
    """Fraction of each pixel covered by ``shape`` centred at (cx, cy) (pixel units), shape [height, width]."""
    s = supersample
    ys = (np.arange(height * s) + 0.5) / s
    xs = (np.arange(width * s) + 0.5) / s
    x, y = np.meshgrid(xs - cx, ys - cy)
    half = OBJECT_SIZE / 2
    if shape == "square":
        inside = (np.abs(x) <= half * 0.9) & (np.abs(y) <= half * 0.9)
    elif shape == "circle":
        inside = x * x + y * y <= half * half
    elif shape == "triangle":  # apex up, base at the bottom of the box
        inside = (y <= half) & (y >= -half) & (np.abs(x) <= (y + half) / 2)
    else:
        raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    return inside.reshape(height, s, width, s).mean(axis=(1, 3))


def trajectories(objects: tuple[ObjectSpec, ObjectSpec], seed: int) -> list[np.ndarray]:
    """Per object, its centre (x, y) at each frame: start places drawn from ``seed`` so that both objects stay
    inside the frame and never come closer than GAP. Candidates are drawn in bulk and the first valid one is
    kept (some direction pairs leave only a few pixels of room)."""
    rng = np.random.default_rng(seed)
    half = OBJECT_SIZE / 2
    frac = np.linspace(0.0, 1.0, NUM_FRAMES)
    for _ in range(1000):
        n = 2048
        paths = []
        for obj in objects:
            dx, dy = DIRECTIONS[obj.direction]
            x0 = rng.uniform(half - min(dx, 0) * TRAVEL, WIDTH - half - max(dx, 0) * TRAVEL, n)
            y0 = rng.uniform(half - min(dy, 0) * TRAVEL, HEIGHT - half - max(dy, 0) * TRAVEL, n)
            paths.append(np.stack([x0[:, None] + frac * TRAVEL * dx, y0[:, None] + frac * TRAVEL * dy], -1))
        distance = np.abs(paths[0] - paths[1]).max(axis=-1).min(axis=-1)  # closest approach, per candidate
        valid = np.flatnonzero(distance >= OBJECT_SIZE + GAP)
        if valid.size:
            return [p[valid[0]] for p in paths]
    raise RuntimeError(f"could not place the objects of {objects} for seed {seed}")


def render(prompt: str, seed: int) -> np.ndarray:
    """The ground-truth video of ``prompt``: float32 [NUM_FRAMES, HEIGHT, WIDTH, 3] in [0, 1]."""
    objects = parse(prompt)
    video = np.zeros((NUM_FRAMES, HEIGHT, WIDTH, 3), dtype=np.float32)
    for obj, path in zip(objects, trajectories(objects, seed)):
        colour = np.array(COLOURS[obj.colour], dtype=np.float32)
        for f, (cx, cy) in enumerate(path):
            cover = shape_coverage(obj.shape, cx, cy)[..., None].astype(np.float32)
            video[f] = video[f] * (1 - cover) + colour * cover
    return video
