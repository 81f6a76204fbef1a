"""TinyCLIP's text tower, run only as far as the end-of-text token.

open_clip's ``CLIP.encode_text`` always runs all 77 context positions. Its attention
is causal and the pooled feature is read at the end-of-text (EOT) position, so no
position after the last EOT in the batch can change the result: the sequence is cut
to ``max(EOT index) + 1`` and the positional embedding and causal mask with it. A
prompt such as "a photo of a red mug on a table." is about 12 tokens, so the
transformer does roughly 1/6 of the work. Results match ``encode_text`` to float
rounding (~1e-7); models whose pooling or mask would make the cut unsafe (no causal
mask, ``last``/``mean`` pooling, custom text towers) fall back to ``encode_text``.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F


def _pool_indices(clip: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The position each row is pooled at, as ``open_clip.transformer.text_global_pool``."""
    if clip.text_pool_type == "argmax":
        return tokens.argmax(dim=-1)  # EOT has the largest id; first occurrence wins
    eos = getattr(clip, "text_eos_id", None)
    return (tokens == eos).int().argmax(dim=-1)  # 'eos'


def can_truncate(clip: torch.nn.Module) -> bool:
    """Whether ``clip``'s text tower is a causal open_clip one pooled at the EOT token."""
    return (
        hasattr(clip, "token_embedding")  # CLIP, not CustomTextCLIP (whose tower is clip.text)
        and getattr(clip, "attn_mask", None) is not None  # causal; bidirectional sees the padding
        and getattr(clip, "text_pool_type", None) in ("argmax", "eos")
        and not (clip.text_pool_type == "eos" and getattr(clip, "text_eos_id", None) is None)
    )


def cut_at_eot(clip: torch.nn.Module, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``tokens`` (B, context_length) cut to ``max(EOT index) + 1`` columns, and each row's
    pooling position. ``clip`` needs only ``text_pool_type`` (and ``text_eos_id`` for 'eos')."""
    pool_at = _pool_indices(clip, tokens)
    length = int(pool_at.max()) + 1
    return tokens[:, :length], pool_at


def encode_cut_tokens(clip: torch.nn.Module, tokens: torch.Tensor, pool_at: torch.Tensor) -> torch.Tensor:
    """The text tower on tokens already cut by ``cut_at_eot``: (B, D) L2-normalised."""
    length = tokens.shape[1]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast_dtype)  # (B, L, width)
    x = x + clip.positional_embedding[:length].to(cast_dtype)
    # Batch-first in, batch-first out: open_clip's Transformer transposes internally when
    # it is not batch_first. The causal mask's top-left L x L block is the causal mask for
    # length L (an additive float mask, -inf above the diagonal, as open_clip builds it).
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), pool_at]
    projection = clip.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return F.normalize(x, dim=-1)


def encode_text_until_eot(clip: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(tokens, normalize=True)``, computed only up to the last EOT.

    clip: an open_clip ``CLIP``. tokens: (B, context_length) token ids, as open_clip's
    tokenizer gives them. Returns (B, D) L2-normalised features in the text tower's dtype.
    Runs under whatever grad mode the caller has set (wrap in ``torch.inference_mode()``).
    Any other model with an ``encode_text`` (the ONNX Runtime backend's) is called as is.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (B, context_length), got shape {tuple(tokens.shape)}")
    if not can_truncate(clip) or tokens.shape[0] == 0:
        return clip.encode_text(tokens, normalize=True)
    return encode_cut_tokens(clip, *cut_at_eot(clip, tokens))
