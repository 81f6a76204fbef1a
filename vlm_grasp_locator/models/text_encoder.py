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

from typing import Callable, List, Optional, Sequence, Tuple

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


def encode_cut_tokens(
    clip: torch.nn.Module, tokens: torch.Tensor, pool_at: torch.Tensor
) -> torch.Tensor:
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


class TemplatePrefixEncoder:
    """``encode_text_until_eot`` for ``template.format(phrase)`` texts, each template's
    fixed beginning computed once.

    With causal attention the hidden states of a text's first tokens do not depend on
    what follows them, so the prefix of each template ("<start> a photo of a") is run
    through the tower once and its per-layer attention inputs are kept. A new phrase
    then runs only its own tokens and the template's ending, attending to the kept
    prefix as keys and values: about a third of the work for TinyCLIP's five templates,
    the same features up to float rounding (tested). Rows whose tokens do not begin with
    the template's prefix tokens (never seen, but cheap to check) are encoded in full.
    """

    def __init__(
        self,
        clip: torch.nn.Module,
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
        templates: Sequence[str],
    ) -> None:
        self.clip = clip
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self._prefix_tokens: Optional[List[torch.Tensor]] = None
        self._prefix_states: Optional[torch.Tensor] = None  # (templates, layers, P, width)

    @staticmethod
    def supported(clip: torch.nn.Module) -> bool:
        """A causal, EOT-pooled open_clip tower of plain self-attention blocks, batch first."""
        transformer = getattr(clip, "transformer", None)
        return (
            can_truncate(clip)
            and getattr(transformer, "batch_first", False)
            and all(
                not hasattr(block, "ln_1_kv") and hasattr(block, "attn")
                for block in transformer.resblocks
            )
        )

    def _prepare(self) -> None:
        """Tokens and per-layer attention inputs (``ln_1`` outputs) of each template's prefix."""
        device = self.clip.positional_embedding.device
        prefixes = [template.split("{}")[0] for template in self.templates]
        tokens = self.tokenizer(prefixes)
        eot = _pool_indices(self.clip, tokens)
        self._prefix_tokens = [row[:end] for row, end in zip(tokens, eot.tolist())]  # without EOT
        longest = max(len(t) for t in self._prefix_tokens)
        blocks = self.clip.transformer.resblocks
        states = torch.zeros(
            len(prefixes), len(blocks), longest, self.clip.transformer.width, device=device
        )
        for i, prefix in enumerate(self._prefix_tokens):
            length = len(prefix)
            x = (
                self.clip.token_embedding(prefix[None].to(device))
                + self.clip.positional_embedding[:length]
            )
            mask = self.clip.attn_mask[:length, :length]
            for layer, block in enumerate(blocks):
                states[i, layer, :length] = block.ln_1(x)[0]
                x = block(x, attn_mask=mask)
        self._prefix_states = states

    def encode(self, phrases: Sequence[str]) -> torch.Tensor:
        """(len(phrases), len(templates), D) L2-normalised features, row t of a phrase for
        ``templates[t].format(phrase)``. Runs under the caller's grad mode."""
        if self._prefix_states is None:
            self._prepare()
        texts = [t.format(p) for p in phrases for t in self.templates]
        tokens = self.tokenizer(texts)
        n_templates = len(self.templates)
        starts = [len(self._prefix_tokens[i % n_templates]) for i in range(len(texts))]
        prefix_ok = all(
            torch.equal(row[:s], self._prefix_tokens[i % n_templates])
            for i, (row, s) in enumerate(zip(tokens, starts))
        )
        if not prefix_ok:
            return encode_text_until_eot(
                self.clip, tokens.to(self.clip.positional_embedding.device)
            ).view(len(phrases), n_templates, -1)
        return self._encode_after_prefix(tokens, starts).view(len(phrases), n_templates, -1)

    def _encode_after_prefix(self, tokens: torch.Tensor, starts: List[int]) -> torch.Tensor:
        clip = self.clip
        device = clip.positional_embedding.device
        rows = len(tokens)
        n_templates = len(self.templates)
        pool_at = _pool_indices(clip, tokens).tolist()
        lengths = [end + 1 - start for start, end in zip(starts, pool_at)]
        new_len = max(lengths)
        prefix_len = self._prefix_states.shape[2]
        ids = torch.zeros(rows, new_len, dtype=tokens.dtype)
        positions = torch.zeros(rows, new_len, dtype=torch.long)
        # Additive mask over (kept prefix, new tokens): a row's real prefix positions and,
        # causally, its own new tokens; padding after a row's EOT is never attended to.
        allowed = torch.zeros(rows, new_len, prefix_len + new_len, dtype=torch.bool)
        causal = torch.ones(new_len, new_len, dtype=torch.bool).tril()
        for r, (start, length) in enumerate(zip(starts, lengths)):
            ids[r, :length] = tokens[r, start : start + length]
            positions[r] = torch.arange(start, start + new_len).clamp(
                max=clip.positional_embedding.shape[0] - 1
            )
            allowed[r, :, :start] = True
            allowed[r, :, prefix_len:] = causal
        mask = torch.zeros(allowed.shape, device=device).masked_fill(
            ~allowed.to(device), float("-inf")
        )
        heads = clip.transformer.resblocks[0].attn.num_heads
        mask = mask.repeat_interleave(heads, dim=0)  # (rows * heads, new, prefix + new)
        template_of_row = torch.arange(rows) % n_templates
        x = clip.token_embedding(ids.to(device)) + clip.positional_embedding[positions.to(device)]
        for layer, block in enumerate(clip.transformer.resblocks):
            h = block.ln_1(x)
            kv = torch.cat([self._prefix_states[template_of_row, layer], h], dim=1)
            x = x + block.ls_1(block.attn(h, kv, kv, need_weights=False, attn_mask=mask)[0])
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        x = clip.ln_final(x)
        x = x[torch.arange(rows, device=device), torch.tensor(lengths, device=device) - 1]
        projection = clip.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return F.normalize(x, dim=-1)
