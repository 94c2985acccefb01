"""A copy (induction) circuit written into a 2-layer Llama by hand, before its pretraining.

Gradient descent forms induction heads late: after ~10^5.7·√(B·C) training tokens (Aoyama et al.,
arXiv:2511.16893), about an hour of this project's 2 CPU cores for the tiny base, and none of 14 recipes
tried here formed one in 25 minutes (README, "Growing a copier"). The tiny base therefore starts with the
two heads written in, and its pretraining trains everything else around them on text:

* layer 0, head 0 — the **previous-token head**: its query and key read a constant direction of the
  residual stream that every embedding carries, so the score depends on position alone; RoPE turns that
  into Σᵢ aᵢ·cos(θᵢ(Δ − 1)) over the high-frequency rotary pairs, which peaks at distance Δ = 1
  (weights aᵢ chosen by :func:`previous_token_kernel`). Its value/output copy the token subspace E into
  the previous-token subspace Pv.
* layer 1, head 0 — the **induction head**: query = E of the current token, key = Pv (the token before
  each earlier position), both in the *low-frequency* rotary pairs, where RoPE hardly rotates over a
  context, so the score is e(current)·e(token before j): position j follows an earlier occurrence of the
  current token. Its value/output copy E of position j into the output subspace O, which the output
  embeddings read (lm_head row x = c·e(x) on O).

Every embedding row is ``[e (E), 0 (Pv), 0 (O), constant, 0 …]``. Rows made as means of rows (LEP's T-init)
keep the constant and a mean of E, so the circuit carries over to a new vocabulary. Everything here is a
pure function over tensors and a model's parameters; nothing is read from or written to disk.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field


class CircuitLayout(BaseModel):
    """Where the circuit lives in the residual stream and how strong it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token_dims: int = Field(48, description="Size of each of the subspaces E, Pv, Pv2 and O.")
    constant: float = Field(16.0, description="Value of the constant coordinate every embedding carries.")
    token_norm: float = Field(8.0, description="Norm of the E part of every embedding row at initialisation.")
    kernel_pairs: int = Field(16, description="High-frequency rotary pairs the previous-token heads use.")
    kernel_margin: float = Field(12.0, description="Logit margin of the right distance over any other one.")
    match_gain: float = Field(4.0, description="Query gain of the induction head (its logit scale).")
    copy_logit: float = Field(12.0, description="Logit the copied token gets through O at initialisation.")
    max_distance: int = Field(1024, description="Distances the previous-token kernels are checked over.")

    def spans(self) -> dict[str, slice]:
        """The residual subspaces: E (token), Pv (previous token), Pv2 (the one before), O (copy output)."""
        k = self.token_dims
        return {name: slice(i * k, (i + 1) * k) for i, name in enumerate(("E", "Pv", "Pv2", "O"))}

    @property
    def constant_dim(self) -> int:
        return 4 * self.token_dims


def previous_token_kernel(
    inv_freq: torch.Tensor, pairs: int, max_distance: int, offset: int = 1
) -> tuple[torch.Tensor, float]:
    """Non-negative weights aᵢ (summing to 1) over the first ``pairs`` rotary frequencies θᵢ such that
    f(Δ) = Σᵢ aᵢ·cos(θᵢ(Δ − offset)) is largest at Δ = ``offset`` among 0 ≤ Δ < ``max_distance``, and the
    margin f(offset) − max over the other Δ. The weights are powers θᵢᵖ (high frequencies set the peak apart
    from its neighbours, low ones keep far distances from aliasing); the power with the largest margin is kept."""
    theta = inv_freq[:pairs].double()
    delta = torch.arange(max_distance, dtype=torch.float64)
    cos = torch.cos(theta[None, :] * (delta[:, None] - offset))  # [distance, pair]
    others = torch.ones(max_distance, dtype=torch.bool)
    others[offset] = False
    best = (None, -math.inf)
    for power in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0):
        weights = theta**power
        weights = weights / weights.sum()
        f = cos @ weights
        margin = float(f[offset] - f[others].max())
        if margin > best[1]:
            best = (weights, margin)
    return best[0].float(), best[1]


# (layer, head) of each hand-written head: layer 0's look 1 and 2 tokens back, layer 1's copies
HEADS = {"previous token": (0, 0), "token before that": (0, 1), "induction": (1, 0)}


def circuit_parameters(model) -> list[tuple[torch.nn.Parameter, tuple[slice, ...]]]:
    """The parameter blocks the circuit occupies: its heads' query/key/value rows and output columns, and
    the input norms of layers 0 and 1. Used to keep them fixed while the rest trains."""
    head = model.config.head_dim
    blocks = []
    for layer_index, head_index in HEADS.values():
        attn = model.model.layers[layer_index].self_attn
        rows = (slice(head_index * head, (head_index + 1) * head), slice(None))
        blocks += [(attn.q_proj.weight, rows), (attn.k_proj.weight, rows), (attn.v_proj.weight, rows)]
        blocks.append((attn.o_proj.weight, (slice(None), rows[0])))
    blocks += [(layer.input_layernorm.weight, (slice(None),)) for layer in model.model.layers[:2]]
    return blocks


def _embeddings(model, layout: CircuitLayout, generator: torch.Generator) -> None:
    spans, k = layout.spans(), layout.token_dims
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    rows = torch.randn(inp.shape[0], k, generator=generator)
    rows = rows / rows.norm(dim=1, keepdim=True) * layout.token_norm
    inp.zero_()
    inp[:, spans["E"]] = rows
    inp[:, layout.constant_dim] = layout.constant
    # the copied token's logit: c·|e|²/rms(final residual) = copy_logit
    final_rms = _rms(layout, inp.shape[1], 4)
    out.mul_(0.1)
    out[:, spans["O"]] = rows * (layout.copy_logit * final_rms / layout.token_norm**2)


def _rms(layout: CircuitLayout, hidden: int, token_parts: int) -> float:
    """RMS of a residual vector holding ``token_parts`` token-sized parts and the constant."""
    return math.sqrt((token_parts * layout.token_norm**2 + layout.constant**2) / hidden)


def _dims(span: slice) -> torch.Tensor:
    return torch.arange(span.start, span.stop)


def _clear_head(attn, head_index: int, head: int) -> tuple[torch.Tensor, ...]:
    """Zero one head's query/key/value rows and output columns; its (q, k, v, o) row/column views."""
    rows = slice(head_index * head, (head_index + 1) * head)
    q, k, v = (w.weight[rows] for w in (attn.q_proj, attn.k_proj, attn.v_proj))
    o = attn.o_proj.weight[:, rows]
    for w in (q, k, v, o):
        w.zero_()
    return q, k, v, o


def _look_back_head(model, layout: CircuitLayout, head_index: int, offset: int, target: str) -> float:
    """A layer-0 head that attends ``offset`` tokens back by position alone and writes E there into ``target``."""
    attn, hidden = model.model.layers[0].self_attn, model.config.hidden_size
    head, half = model.config.head_dim, model.config.head_dim // 2
    inv_freq = model.model.rotary_emb.inv_freq.float()
    weights, margin = previous_token_kernel(inv_freq, layout.kernel_pairs, layout.max_distance, offset)
    x_c = layout.constant / _rms(layout, hidden, 1)  # the normalised constant coordinate
    # score(Δ) = x_c² · Σ qᵢ kᵢ cos(θᵢ(Δ−offset)) / √head; scaled so that the margin is kernel_margin logits
    scale = math.sqrt(layout.kernel_margin * math.sqrt(head) / (margin * x_c**2))
    q, k, v, o = _clear_head(attn, head_index, head)
    pairs = torch.arange(layout.kernel_pairs)
    angle = offset * inv_freq[: layout.kernel_pairs]
    q[pairs, layout.constant_dim] = scale * weights
    k[pairs, layout.constant_dim] = scale * torch.cos(angle)
    k[pairs + half, layout.constant_dim] = scale * torch.sin(angle)
    span, n = layout.spans(), layout.token_dims
    v[torch.arange(n), _dims(span["E"])] = 1.0
    o[_dims(span[target]), torch.arange(n)] = _rms(layout, hidden, 1)
    return margin


def _induction_head(model, layout: CircuitLayout) -> None:
    """Layer 1, head 0: score = e(i)·e(j−1) + e(i−1)·e(j−2) (both tokens before j match the last two), in
    the lowest-frequency rotary pairs; copies e(j) into O."""
    attn, hidden = model.model.layers[1].self_attn, model.config.hidden_size
    head, half = model.config.head_dim, model.config.head_dim // 2
    span, n = layout.spans(), layout.token_dims
    q, k, v, o = _clear_head(attn, 0, head)
    # 2n query/key dimensions go to the lowest-frequency pairs, both halves: the last n pairs
    low = torch.cat([torch.arange(half - n, half), torch.arange(head - n, head)])
    query = torch.cat([_dims(span["E"]), _dims(span["Pv"])])
    key = torch.cat([_dims(span["Pv"]), _dims(span["Pv2"])])
    q[low, query] = layout.match_gain
    k[low, key] = 1.0
    v[torch.arange(n), _dims(span["E"])] = 1.0
    o[_dims(span["O"]), torch.arange(n)] = _rms(layout, hidden, 3)


@torch.no_grad()
def install_copy_circuit(model, layout: CircuitLayout, seed: int = 0) -> dict[str, float]:
    """Write the look-back heads, the induction head and the embeddings they need into ``model`` (a Llama
    with ≥ 2 layers, no grouped keys, head_dim ≥ 2·token_dims, hidden > 4·token_dims, untied); returns
    facts for the manifest (the look-back kernels' margins)."""
    config = model.config
    if config.num_key_value_heads != config.num_attention_heads or config.head_dim < 2 * layout.token_dims:
        raise ValueError("the copy circuit needs one key head per query head and head_dim ≥ 2·token_dims")
    if config.hidden_size <= layout.constant_dim or config.tie_word_embeddings:
        raise ValueError("the copy circuit needs hidden_size > 4·token_dims and untied embeddings")
    _embeddings(model, layout, torch.Generator().manual_seed(seed))
    for layer in model.model.layers[:2]:
        layer.input_layernorm.weight.fill_(1.0)
    facts = {"previous_token_margin": _look_back_head(model, layout, 0, 1, "Pv")}
    facts["token_before_margin"] = _look_back_head(model, layout, 1, 2, "Pv2")
    _induction_head(model, layout)
    return facts


def circuit_snapshot(model) -> list[tuple[torch.nn.Parameter, tuple[slice, ...], torch.Tensor]]:
    """The circuit's blocks and their current values, for :func:`restore_circuit_` (after each optimizer step
    while the rest of the model trains: weight decay and Adam's moments would move them otherwise)."""
    return [(p, index, p.detach()[index].clone()) for p, index in circuit_parameters(model)]


@torch.no_grad()
def restore_circuit_(snapshot) -> None:
    for param, index, value in snapshot:
        param[index] = value
