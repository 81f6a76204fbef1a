"""MobileSAM's mask decoder, reorganised for hundreds of prompts on one image.

The maths is the decoder's own (``MaskDecoder.predict_masks`` with its two-way
transformer, same weights, same order of layers); only the order of evaluation
changes, which moves results by float rounding (~1e-5), never by more:

* Everything that depends on the image alone is computed once per image instead of
  once per prompt: the first layer's image-side keys, values and queries.
* Attention between the 7 prompt tokens and the 4096 image tokens never projects the
  image tokens: the projection is folded into the 7 token vectors instead
  (``(Q Wk) X^T`` rather than ``Q (X Wk)^T``; a key bias adds the same amount to every
  score of one query and cancels in the softmax; attention rows sum to one, so a value
  bias passes straight through). For 7 tokens against 4096 image positions that is
  about half the multiply-adds.
* Attention outputs are added to the image tokens inside the same fused product
  (``baddbmm``), with the output bias folded into the values.
* The IoU head needs only the IoU token, so quality filtering can happen before the
  upscaling convolutions, which then run only for prompts that still have a mask, and
  only the masks that passed are multiplied out (``upscaled_logits``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


@dataclass
class DecodedTokens:
    """Transformer outputs for a batch of B prompts."""

    iou_pred: torch.Tensor  # (B, 4)
    mask_tokens: torch.Tensor  # (B, 4, C)
    image_tokens: torch.Tensor  # (B, N, C): the image side after the transformer


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, heads, T, D/heads)."""
    b, t, d = x.shape
    return x.reshape(b, t, num_heads, d // num_heads).transpose(1, 2)


def _tokens_to_image(
    attn, q: torch.Tensor, image: torch.Tensor, image_plus_pe: torch.Tensor
) -> torch.Tensor:
    """``attn(q=q, k=image_plus_pe, v=image)`` for few queries, without projecting the image."""
    b, t, _ = q.shape
    h = attn.num_heads
    d = attn.internal_dim // h
    qh = _heads(attn.q_proj(q), h)  # (B, h, T, d)
    wk = attn.k_proj.weight.view(h, d, -1)  # (h, d, C)
    folded_q = torch.einsum("bhtd,hdc->bhtc", qh, wk).reshape(b, h * t, -1) / math.sqrt(d)
    probs = torch.softmax(folded_q @ image_plus_pe.transpose(1, 2), dim=-1)  # (B, hT, N)
    mixed = (probs @ image).view(b, h, t, -1)  # (B, h, T, C)
    wv = attn.v_proj.weight.view(h, d, -1)
    out = torch.einsum("bhtc,hdc->bthd", mixed, wv) + attn.v_proj.bias.view(h, d)
    return attn.out_proj(out.reshape(b, t, h * d))


def _tokens_to_fixed_image(
    attn, q: torch.Tensor, k_heads: torch.Tensor, v_heads: torch.Tensor
) -> torch.Tensor:
    """Token-to-image attention against keys/values shared by every prompt (h, N, d).

    One matrix product per head with the batch folded into rows, so the shared keys are
    never copied once per prompt.
    """
    b, t, _ = q.shape
    h = attn.num_heads
    d = k_heads.shape[-1]
    qh = attn.q_proj(q).view(b * t, h, d)
    out = [
        torch.softmax(qh[:, i] @ k_heads[i].T / math.sqrt(d), dim=-1) @ v_heads[i]
        for i in range(h)
    ]  # h x (B*T, d)
    return attn.out_proj(torch.stack(out, dim=1).view(b, t, h * d))


def _image_to_tokens(
    attn, image_plus_pe: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """``residual + attn(q=image_plus_pe, k=k, v=v)``: image positions attend to few tokens."""
    b, t, _ = k.shape
    h = attn.num_heads
    d = attn.internal_dim // h
    kh = _heads(attn.k_proj(k), h)  # (B, h, T, d)
    wq = attn.q_proj.weight.view(h, d, -1)  # (h, d, C)
    folded_k = torch.einsum("hdc,bhtd->bhtc", wq, kh).reshape(b, h * t, -1) / math.sqrt(d)
    bias = torch.einsum("hd,bhtd->bht", attn.q_proj.bias.view(h, d), kh).reshape(
        b, h * t, 1
    ) / math.sqrt(d)
    scores = torch.baddbmm(bias, folded_k, image_plus_pe.transpose(1, 2))  # (B, hT, N)
    return _mix_tokens(attn, scores, v, residual)


def _image_fixed_to_tokens(
    attn, q_heads: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """``residual +`` image-to-token attention whose image-side queries (h, N, d) are
    shared by every prompt."""
    b, t, _ = k.shape
    h = attn.num_heads
    d = q_heads.shape[-1]
    kh = attn.k_proj(k).view(b * t, h, d)
    scores = torch.stack([kh[:, i] @ q_heads[i].T for i in range(h)], dim=1)  # (B*T, h, N)
    scores = scores.view(b, t, h, -1).transpose(1, 2).reshape(b, h * t, -1) / math.sqrt(d)
    return _mix_tokens(attn, scores, v, residual)


def _mix_tokens(
    attn, scores: torch.Tensor, v: torch.Tensor, residual: torch.Tensor
) -> torch.Tensor:
    """``residual +`` softmax per head over the T tokens of ``scores`` (B, hT, N), then
    values and output projection folded together.

    Each head's probabilities sum to one over its tokens, so every image position's row
    of all h heads sums to h: adding bias/h to each folded value row adds the output
    bias once, and the residual comes in through the same fused product. That saves two
    passes over the (B, N, C) image tensor."""
    b, ht, n = scores.shape
    h = attn.num_heads
    t = ht // h
    d = attn.internal_dim // h
    probs = torch.softmax(scores.view(b, h, t, n), dim=2).view(b, ht, n)
    vh = _heads(attn.v_proj(v), h)  # (B, h, T, d)
    wo = attn.out_proj.weight.view(-1, h, d)  # (C, h, d)
    folded_v = torch.einsum("bhtd,chd->bhtc", vh, wo).reshape(b, ht, -1) + attn.out_proj.bias / h
    if torch.is_autocast_enabled(residual.device.type):
        # Under fp16 autocast baddbmm would round the fp32 residual stream to fp16.
        return residual + torch.bmm(probs.transpose(1, 2), folded_v)
    return torch.baddbmm(residual, probs.transpose(1, 2), folded_v)


def upscaled_logits(
    decoder: torch.nn.Module,
    image_tokens: torch.Tensor,
    hyper: torch.Tensor,
    grid_hw: Tuple[int, int],
) -> torch.Tensor:
    """``output_upscaling`` followed by the hypernetwork product:
    (k, N, C), (k, m, c) -> (k, m, 4h, 4w).

    Both transposed convolutions have kernel 2 and stride 2, so each is one matrix
    product per pixel (channels in, a 2x2 block of channels out), and so is the
    channel LayerNorm between them. Working on (pixels, channels) rows needs no layout
    changes until the final logits, which have only ``m`` channels instead of 32, and
    asking for one mask's logits costs no upscaling for the others.
    """
    conv1, norm, act1, conv2, act2 = decoder.output_upscaling
    for conv in (conv1, conv2):  # what makes each a per-pixel product
        assert (
            conv.kernel_size == conv.stride == (2, 2)
            and conv.padding == conv.output_padding == (0, 0)
            and conv.groups == 1
        )
    h, w = grid_hw
    k, n, c = image_tokens.shape
    c1, c2 = conv1.out_channels, conv2.out_channels
    m = hyper.shape[1]
    # ConvTranspose2d weight (in, out, 2, 2) -> (in, 2*2*out): rows give each block's pixels.
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    x = torch.baddbmm(conv1.bias.repeat(4).expand(k, 1, -1), image_tokens, w1.expand(k, -1, -1))
    x = act1(F.layer_norm(x.view(k, n * 4, c1), (c1,), norm.weight, norm.bias, norm.eps))
    x = act2(torch.baddbmm(conv2.bias.repeat(4).expand(k, 1, -1), x, w2.expand(k, -1, -1)))
    logits = torch.bmm(
        x.view(k, n * 16, c2), hyper.transpose(1, 2)
    )  # (k, rows: y, x, a, b, c, d; m)
    # Output pixel (4y + 2a + c, 4x + 2b + d): a/b from the first convolution, c/d from the second.
    logits = logits.view(k, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return logits.reshape(k, m, 4 * h, 4 * w)


def hypernetwork_outputs(decoder: torch.nn.Module, mask_tokens: torch.Tensor) -> torch.Tensor:
    """Each mask token through its own MLP: (k, n_masks, C) -> (k, n_masks, c)."""
    return torch.stack(
        [mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )


@dataclass
class ImageSide:
    """What the decoder needs of one image, shared by every prompt on it.

    image, pos: (1, N, C) image tokens (features plus dense prompt embedding) and their
    positional encoding; k0, v0: (heads, N, d) the first layer's token-to-image keys and
    values; q0: (heads, N, d) its image-to-token queries.
    """

    image: torch.Tensor
    pos: torch.Tensor
    k0: torch.Tensor
    v0: torch.Tensor
    q0: torch.Tensor


def image_side(
    transformer: torch.nn.Module,
    features: torch.Tensor,
    image_pe: torch.Tensor,
    dense_embedding: torch.Tensor,
) -> ImageSide:
    """Everything that depends on the image alone. Inputs (1, C, h, w)."""
    image = (features + dense_embedding).flatten(2).transpose(1, 2)  # (1, N, C)
    pos = image_pe.flatten(2).transpose(1, 2)
    first = transformer.layers[0]
    t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
    return ImageSide(
        image=image,
        pos=pos,
        k0=_heads(t2i.k_proj(image + pos), t2i.num_heads)[0],
        v0=_heads(t2i.v_proj(image), t2i.num_heads)[0],
        q0=_heads(i2t.q_proj(image + pos), i2t.num_heads)[0],
    )


def decode_tokens(
    decoder: torch.nn.Module, side: ImageSide, sparse_embeddings: torch.Tensor
) -> DecodedTokens:
    """The two-way transformer and IoU head for B prompts (sparse: (B, n_points, C))."""
    transformer = decoder.transformer
    b = sparse_embeddings.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    token_pe = torch.cat((output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_embeddings), dim=1)
    queries = token_pe
    keys = None  # the image tokens, identical for every prompt until the first update
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + token_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        q = queries + token_pe
        if keys is None:
            attn_out = _tokens_to_fixed_image(layer.cross_attn_token_to_image, q, side.k0, side.v0)
        else:
            keys_pe = keys + side.pos  # both cross-attentions of this layer see the same keys
            attn_out = _tokens_to_image(layer.cross_attn_token_to_image, q, keys, keys_pe)
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + token_pe
        if keys is None:
            keys = _image_fixed_to_tokens(
                layer.cross_attn_image_to_token, side.q0, q, queries, side.image
            )
        else:
            keys = _image_to_tokens(layer.cross_attn_image_to_token, keys_pe, q, queries, keys)
        keys = layer.norm4(keys)
    if keys is None:
        keys = side.image.expand(b, -1, -1)
    final = transformer.final_attn_token_to_image
    queries = queries + _tokens_to_image(final, queries + token_pe, keys, keys + side.pos)
    queries = transformer.norm_final_attn(queries)
    return DecodedTokens(
        iou_pred=decoder.iou_prediction_head(queries[:, 0]),
        mask_tokens=queries[:, 1 : 1 + decoder.num_mask_tokens],
        image_tokens=keys,
    )


def all_mask_logits(
    decoder: torch.nn.Module,
    image_tokens: torch.Tensor,
    mask_tokens: torch.Tensor,
    grid_hw: Tuple[int, int],
) -> torch.Tensor:
    """Low-resolution logits of all mask tokens of k prompts: (k, n_masks, 4h, 4w).

    image_tokens: (k, h*w, C) after the transformer; mask_tokens: (k, n_masks, C).
    """
    return upscaled_logits(
        decoder, image_tokens, hypernetwork_outputs(decoder, mask_tokens), grid_hw
    )


class FastMaskDecoder:
    """Wraps a ``mobile_sam`` ``MaskDecoder`` (weights shared, nothing copied).

    A ``interfaces.MaskDecoder``: torch, so its prompt batches may run side by side.
    """

    parallel_batches = True

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.decoder = decoder
        self.transformer = decoder.transformer
        self._side: Optional[ImageSide] = None

    @torch.inference_mode()
    def set_image(
        self, features: torch.Tensor, image_pe: torch.Tensor, dense_embedding: torch.Tensor
    ) -> None:
        """Precompute everything that depends on the image alone. Shapes (1, C, h, w)."""
        self.grid_hw = tuple(features.shape[-2:])
        self._side = image_side(self.transformer, features, image_pe, dense_embedding)

    @torch.inference_mode()
    def run_transformer(self, sparse_embeddings: torch.Tensor) -> DecodedTokens:
        """The two-way transformer and IoU head for B prompts (sparse: (B, n_points, C))."""
        if self._side is None:
            raise RuntimeError("set_image must be called before run_transformer")
        return decode_tokens(self.decoder, self._side, sparse_embeddings)

    @torch.inference_mode()
    def masks_for(
        self, tokens: DecodedTokens, prompt_idx: torch.Tensor, mask_idx: torch.Tensor
    ) -> torch.Tensor:
        """Low-resolution mask logits (K, 256, 256) for the (prompt, mask) pairs asked for.

        ``prompt_idx`` must be sorted (as ``nonzero`` returns it), so pairs come out in
        order, and not empty. One prompt at a time, so the upscaled features of only one
        (8 MB) exist at once, and only the masks asked for are multiplied out.
        """
        hyper = hypernetwork_outputs(self.decoder, tokens.mask_tokens)
        out = []
        for prompt in torch.unique(prompt_idx).tolist():
            masks = mask_idx[prompt_idx == prompt]
            one = slice(prompt, prompt + 1)
            out.append(
                upscaled_logits(
                    self.decoder, tokens.image_tokens[one], hyper[one, masks], self.grid_hw
                )[0]
            )
        return torch.cat(out)
