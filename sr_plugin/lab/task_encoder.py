"""The text encoder of the trained families: a hand-set UMT5 (Wan) or T5 (CogVideoX) that parses the task's
grammar, a stand-in for a pretrained encoder.

Why constructed and not random: a frozen random encoder does not carry which words belong together (reference
section 7). The same word in object 1's slot and in object 2's slot gets nearly the same embedding, and Wan's
cross-attention gives text tokens no positions, so a transformer sees a prompt as a set of words and cannot
tell "a red square ... and a blue circle" from "a red circle ... and a blue square". A real umT5 / T5-XXL
carries that binding; this encoder carries it by construction, with the same classes and folder layout, so the
pipelines use it exactly as they use the published encoders.

Why constructed and not trained: it is exact (a probe recovers every colour token's own shape and direction,
`tests/test_trained.py`), deterministic, costs no training, and states plainly what it encodes.

The weights, in a model of the shipped width (d_model 32, 4 heads of 8, 2 layers):
- word embeddings: one-hot, one dimension per token of the vocabulary (dims 0..18);
- layer 1, self-attention: query and key weights zero, so the scores are the relative-position bias alone.
  Head 0 attends to the token 1 ahead (a colour's shape: "a <colour> <shape> moving <direction>") and writes
  that token's shape one-hot into dims SHAPE_DIMS; head 1 attends 3 ahead (the direction) and writes its
  direction one-hot into DIRECTION_DIMS. Both attend to themselves where the target is masked or missing
  (a self copy of a non-shape/non-direction token writes nothing). Heads 2 and 3 write nothing;
- every other weight that could change a token (feed-forwards, layer 2's attention output) is zero, and every
  layer norm weight is 1.
So each colour token's embedding carries its own object's (colour, shape, direction), and every other token
its own word.
"""

from __future__ import annotations

import math

import torch

from . import task

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "</s>", "<unk>")
TOKENS: tuple[str, ...] = SPECIAL_TOKENS + task.VOCABULARY
WIDTH = 32
HEADS = 4
HEAD_DIM = 8
#: 16 buckets per direction, the first 8 exact: offsets +1 and +3 each get a bucket of their own.
RELATIVE_BUCKETS = 32
#: Where the copies go: after the one-hot word dimensions.
SHAPE_DIMS: tuple[int, ...] = tuple(range(len(TOKENS), len(TOKENS) + len(task.SHAPES)))
DIRECTION_DIMS: tuple[int, ...] = tuple(range(SHAPE_DIMS[-1] + 1, SHAPE_DIMS[-1] + 1 + len(task.DIRECTIONS)))
#: Token offsets from a colour word to its shape and its direction in the task's grammar.
SHAPE_OFFSET = 1
DIRECTION_OFFSET = 3
#: Position-bias logits: the target dominates by e^-TARGET_BIAS/2 over self, self by e^-TARGET_BIAS/2 over the rest.
TARGET_BIAS = 40.0


def build(family: str) -> torch.nn.Module:
    """The family's encoder class (Wan: `UMT5EncoderModel`, CogVideoX: `T5EncoderModel`) with the weights above;
    frozen, in eval mode."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    assert DIRECTION_DIMS[-1] < WIDTH, "the copies must fit the width"
    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if family == "wan" else (T5Config, T5EncoderModel)
    config = config_cls(vocab_size=len(TOKENS), d_model=WIDTH, d_kv=HEAD_DIM, d_ff=64, num_layers=2,
                        num_heads=HEADS, relative_attention_num_buckets=RELATIVE_BUCKETS, dropout_rate=0.0,
                        feed_forward_proj="gated-gelu")
    model = model_cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.fill_(1.0)
        embed = model.get_input_embeddings().weight
        embed[:, : len(TOKENS)] = torch.eye(len(TOKENS))
        _set_copy_heads(model)
    return model.eval().requires_grad_(False)


def _set_copy_heads(model: torch.nn.Module) -> None:
    attention = model.encoder.block[0].layer[0].SelfAttention
    bias = attention.relative_attention_bias.weight  # [buckets, heads]
    buckets = _bucket_of(attention)
    ids = {word: TOKENS.index(word) for word in TOKENS}
    # A token normalized by the first layer norm: a one-hot of magnitude 1 becomes sqrt(WIDTH); scale back to 1.
    gain = 1.0 / math.sqrt(WIDTH)
    for head, offset, words, dims in ((0, SHAPE_OFFSET, task.SHAPES, SHAPE_DIMS),
                                      (1, DIRECTION_OFFSET, tuple(task.DIRECTIONS), DIRECTION_DIMS)):
        bias[buckets[offset], head] = TARGET_BIAS
        bias[buckets[0], head] = TARGET_BIAS / 2
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
