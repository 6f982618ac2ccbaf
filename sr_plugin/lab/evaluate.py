"""Scores a video of the task (`sr_plugin.lab.task`): is each prompted attribute right, and how close is it to a
reference video (PSNR and SSIM, from scikit-image).

Per prompted object:
- colour: a connected region of that hue (an object pixel has its brightest channel above OBJECT_LEVEL; its
  hue is its colour divided by that channel, matched to the nearest task colour within HUE_TOLERANCE) of at
  least MIN_AREA pixels, in at least MIN_FRAMES of the frames;
- shape: in those frames, the task shape whose own rendering, centred on the region's box, overlaps the region
  best (intersection over union); the majority over frames;
- direction: the straight-line fit of the region's box centre over the frames; the dominant axis and its sign,
  if it travels at least MIN_TRAVEL pixels.
A prompt is right when all six attributes are. The thresholds are set once from the task's geometry and
never tuned on model outputs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..calibration.fidelity import as_video_array, fidelity  # noqa: F401  (fidelity: part of the evaluator's API)
from . import task

#: A pixel is part of an object when its brightest channel exceeds this (the background is black).
OBJECT_LEVEL = 0.35
#: Largest distance between a pixel's hue and a task colour (both with their brightest channel at 1).
HUE_TOLERANCE = 0.5
#: Smallest region that counts as an object: a third of the triangle, the smallest shape (72 pixels).
MIN_AREA = task.OBJECT_SIZE**2 / 6
#: An object must be seen in a majority of the frames.
MIN_FRAMES = task.NUM_FRAMES // 2 + 1
#: An object moves TRAVEL (8) pixels; less than 40% of that in the fitted travel is no motion.
MIN_TRAVEL = 0.4 * task.TRAVEL

_PALETTE_NAMES = list(task.COLOURS)
_PALETTE = np.array([task.COLOURS[n] for n in _PALETTE_NAMES], dtype=np.float32)


@dataclass
class ObjectScore:
    spec: task.ObjectSpec
    colour: bool
    shape: bool
    direction: bool
    seen_shape: str | None = None
    seen_direction: str | None = None

    @property
    def right(self) -> bool:
        return self.colour and self.shape and self.direction


@dataclass
class VideoScore:
    prompt: str
    objects: list[ObjectScore] = field(default_factory=list)

    @property
    def right(self) -> bool:
        """Every prompted attribute is right."""
        return all(o.right for o in self.objects)

    @property
    def attributes(self) -> tuple[int, int]:
        """(attributes right, attributes asked)."""
        right = sum(int(o.colour) + int(o.shape) + int(o.direction) for o in self.objects)
        return right, 3 * len(self.objects)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "right": self.right,
            "objects": [
                {
                    "colour": o.spec.colour,
                    "shape": o.spec.shape,
                    "direction": o.spec.direction,
                    "colour_ok": o.colour,
                    "shape_ok": o.shape,
                    "direction_ok": o.direction,
                    "seen_shape": o.seen_shape,
                    "seen_direction": o.seen_direction,
                }
                for o in self.objects
            ],
        }


def hue_labels(frame: np.ndarray) -> np.ndarray:
    """Per pixel, the index of its task colour, or -1 (background or no task colour)."""
    level = frame.max(axis=-1)
    hue = frame / np.maximum(level, 1e-6)[..., None]
    dist = np.linalg.norm(hue[..., None, :] - _PALETTE, axis=-1)
    labels = dist.argmin(axis=-1)
    labels[(level <= OBJECT_LEVEL) | (dist.min(axis=-1) > HUE_TOLERANCE)] = -1
    return labels


def _largest_region(mask: np.ndarray) -> np.ndarray | None:
    from skimage.measure import label

    regions = label(mask, connectivity=2)
    if regions.max() == 0:
        return None
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    best = regions == sizes.argmax()
    return best if best.sum() >= MIN_AREA else None


def _shape_of(region: np.ndarray, cx: float, cy: float) -> str:
    def iou(shape: str) -> float:
        template = task.shape_coverage(shape, cx, cy, region.shape[0], region.shape[1], supersample=2) >= 0.5
        return (template & region).sum() / max((template | region).sum(), 1)

    return max(task.SHAPES, key=iou)


def _direction_of(frames: list[int], centres: list[tuple[float, float]]) -> str | None:
    if len(frames) < 2:
        return None
    t = np.asarray(frames, dtype=float)
    xy = np.asarray(centres, dtype=float)
    travel = np.polyfit(t, xy, 1)[0] * (task.NUM_FRAMES - 1)  # fitted (dx, dy) over the clip
    axis = int(np.abs(travel).argmax())
    if abs(travel[axis]) < MIN_TRAVEL:
        return None
    step = [0, 0]
    step[axis] = int(np.sign(travel[axis]))
    return next(name for name, d in task.DIRECTIONS.items() if list(d) == step)


def score_video(video: Any, prompt: str) -> VideoScore:
    """Whether each attribute the prompt asks for is in the video."""
    objects = task.parse(prompt)
    frames = as_video_array(video)
    labels = [hue_labels(f) for f in frames]
    score = VideoScore(prompt)
    for obj in objects:
        index = _PALETTE_NAMES.index(obj.colour)
        seen, centres, shapes = [], [], []
        for f, lab in enumerate(labels):
            region = _largest_region(lab == index)
            if region is None:
                continue
            ys, xs = np.nonzero(region)  # the box centre: every shape is drawn centred in its box
            cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
            seen.append(f)
            centres.append((cx, cy))
            shapes.append(_shape_of(region, cx, cy))
        colour_ok = len(seen) >= MIN_FRAMES
        shape = Counter(shapes).most_common(1)[0][0] if colour_ok else None
        direction = _direction_of(seen, centres) if colour_ok else None
        score.objects.append(
            ObjectScore(obj, colour_ok, shape == obj.shape, direction == obj.direction, shape, direction)
        )
    return score


def summarize(scores: list[VideoScore]) -> dict[str, float]:
    """Prompt accuracy (every attribute right) and attribute accuracy, in percent."""
    if not scores:
        raise ValueError("no videos to summarize")
    right = sum(s.attributes[0] for s in scores)
    asked = sum(s.attributes[1] for s in scores)
    return {
        "prompt_accuracy": 100.0 * sum(s.right for s in scores) / len(scores),
        "attribute_accuracy": 100.0 * right / asked,
    }
