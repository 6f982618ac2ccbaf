"""The text encoder of the trained families: a hand-set UMT5 (Wan) or T5 (CogVideoX) that parses the task's
grammar, a stand-in for a pretrained encoder.

Why constructed and not random: a frozen random encoder does not carry which words belong together (reference
section 7). The same word in object 1's slot and in object 2's slot gets nearly the same embedding, and Wan's
cross-attention gives text tokens no positions, so a transformer sees a prompt as a set of words and cannot
tell "a red square ... and a blue circle" from "a red circle ... and a blue square". A real umT5 / T5-XXL
carries that binding; this encoder carries it by construction, with the same classes and folder layout, so the
pipelines use it exactly as they use the published encoders.

Why constructed and not trained: it is exact (a probe recovers every colour token's own shape and direction,
`tests/lab/test_task_encoder.py`), deterministic, costs no training, and states plainly what it encodes.

The weights, in a model of the shipped width (d_model 32, heads of 8, 2 layers):
- word embeddings: one-hot, one dimension per token of the vocabulary (dims 0..18);
- layer 1, self-attention: query and key weights zero, so the scores are the relative-position bias alone.
  Each head follows one copy rule of `COPY_RULES`: it attends to the token at its offset and writes that
  token's word, if it is of the rule's kind (shape, direction or colour), as a one-hot into the rule's
  dimensions; where that token is masked or missing it attends to its fallback offset instead, chosen so that
  it lands on a word the rule does not copy (so no filler word and no other object's word gets a copy);
- every other weight that could change a token (feed-forwards, layer 2's attention output) is zero, and every
  layer norm weight is 1.

The families' rules differ by what their transformers were shown to need (docs/trained-families.md):
- CogVideoX: each colour token carries its own object's shape and direction (2 rules, 4 heads). Its large model
  gets 98% of held-out prompts right on it.
- Wan: every content word carries its whole clause: the colour token its shape and direction, the shape token
  its colour and direction, the direction token its colour and shape (6 rules, 8 heads). With the colour-only
  rules Wan's large model stalled at 81% of held-out prompts: its cross-attention reads the text as a set of
  tokens, and it drew shapes from the bare shape words (replacing them with "a" dropped it from 81% to 25%),
  which name the prompt's shapes without saying whose; most of its wrong shapes were the other object's. On
  these rules, from the same weights, it reached 89% in 4,500 steps (docs/trained-families.md).
"""

from __future__ import annotations

import math

import torch

from . import task

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")
TOKENS: tuple[str, ...] = SPECIAL_TOKENS + task.VOCABULARY
WIDTH = 32
HEAD_DIM = 8
#: 16 buckets per direction, the first 8 exact: offsets -3..+3 each get a bucket of their own.
RELATIVE_BUCKETS = 32
#: Where the copies go: after the one-hot word dimensions.
SHAPE_DIMS: tuple[int, ...] = tuple(range(len(TOKENS), len(TOKENS) + len(task.SHAPES)))
DIRECTION_DIMS: tuple[int, ...] = tuple(range(SHAPE_DIMS[-1] + 1, SHAPE_DIMS[-1] + 1 + len(task.DIRECTIONS)))
COLOUR_DIMS: tuple[int, ...] = tuple(range(DIRECTION_DIMS[-1] + 1, DIRECTION_DIMS[-1] + 1 + len(task.COLOURS)))
#: Token offsets from a colour word to its shape and its direction in the task's grammar.
SHAPE_OFFSET = 1
DIRECTION_OFFSET = 3
#: A copy rule: (offset of the token to read, the words it copies, where they go, fallback offset). The offsets
#: follow the grammar "a <colour> <shape> moving <direction> and a ..."; each fallback lands, for every position
#: lacking the offset's token in a task prompt, on a word the rule does not copy (`tests/lab/test_task_encoder.py`).
CopyRule = tuple[int, tuple[str, ...], tuple[int, ...], int]
_SHAPE_FROM_COLOUR: CopyRule = (SHAPE_OFFSET, task.SHAPES, SHAPE_DIMS, 0)
_DIRECTION_FROM_COLOUR_SELF: CopyRule = (DIRECTION_OFFSET, tuple(task.DIRECTIONS), DIRECTION_DIMS, 0)
COPY_RULES: dict[str, tuple[CopyRule, ...]] = {
    # As shipped with the CogVideoX family (its self fallback gives the second direction word a copy of itself).
    "cogvideox": (_SHAPE_FROM_COLOUR, _DIRECTION_FROM_COLOUR_SELF),
    "wan": (
        _SHAPE_FROM_COLOUR,
        (DIRECTION_OFFSET, tuple(task.DIRECTIONS), DIRECTION_DIMS, -3),  # colour <- its direction
        (-SHAPE_OFFSET, tuple(task.COLOURS), COLOUR_DIMS, 0),  # shape <- its colour
        (DIRECTION_OFFSET - SHAPE_OFFSET, tuple(task.DIRECTIONS), DIRECTION_DIMS, -2),  # shape <- its direction
        (-DIRECTION_OFFSET, tuple(task.COLOURS), COLOUR_DIMS, 2),  # direction <- its colour
        (SHAPE_OFFSET - DIRECTION_OFFSET, task.SHAPES, SHAPE_DIMS, 0),  # direction <- its shape
    ),
}
#: Heads per family: enough for its rules (the rest write nothing).
HEADS_OF: dict[str, int] = {"cogvideox": 4, "wan": 8}
#: Position-bias logits: the target dominates by e^-TARGET_BIAS/2 over the fallback, the fallback by e^-TARGET_BIAS/2
#: over the rest.
TARGET_BIAS = 40.0


def build(family: str) -> torch.nn.Module:
    """The family's encoder class (Wan: `UMT5EncoderModel`, CogVideoX: `T5EncoderModel`) with the weights above;
    frozen, in eval mode."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    assert COLOUR_DIMS[-1] < WIDTH, "the copies must fit the width"
    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if family == "wan" else (T5Config, T5EncoderModel)
    config = config_cls(
        vocab_size=len(TOKENS),
        d_model=WIDTH,
        d_kv=HEAD_DIM,
        d_ff=64,
        num_layers=2,
        num_heads=HEADS_OF[family],
        relative_attention_num_buckets=RELATIVE_BUCKETS,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
    )
    model = model_cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.fill_(1.0)
        embed = model.get_input_embeddings().weight
        embed[:, : len(TOKENS)] = torch.eye(len(TOKENS))
        _set_copy_heads(model, COPY_RULES[family])
    return model.eval().requires_grad_(False)


def _set_copy_heads(model: torch.nn.Module, rules: tuple[CopyRule, ...]) -> None:
    attention = model.encoder.block[0].layer[0].SelfAttention
    bias = attention.relative_attention_bias.weight  # [buckets, heads]
    buckets = _bucket_of(attention)
    ids = {word: TOKENS.index(word) for word in TOKENS}
    # A token normalized by the first layer norm: a one-hot of magnitude 1 becomes sqrt(WIDTH); scale back to 1.
    gain = 1.0 / math.sqrt(WIDTH)
    for head, (offset, words, dims, fallback) in enumerate(rules):
        bias[buckets[offset], head] = TARGET_BIAS
        bias[buckets[fallback], head] = TARGET_BIAS / 2
        for k, (word, dim) in enumerate(zip(words, dims)):
            attention.v.weight[head * HEAD_DIM + k, ids[word]] = 1.0
            attention.o.weight[dim, head * HEAD_DIM + k] = gain


def _bucket_of(attention: torch.nn.Module) -> dict[int, int]:
    """The bias bucket of each relative offset -8..8, read through the model's own bucketing (so a change of
    the bucketing in transformers cannot silently misplace the heads)."""
    table = attention.relative_attention_bias.weight
    saved = table.detach().clone()
    with torch.no_grad():
        table.copy_(torch.arange(table.shape[0], dtype=table.dtype)[:, None].expand_as(table))
        ids = attention.compute_bias(9, 17)[0, 0]  # [query, key]: query 8 sees keys 0..16, offsets -8..8
        table.copy_(saved)
    return {offset: int(ids[8, 8 + offset]) for offset in range(-8, 9)}
