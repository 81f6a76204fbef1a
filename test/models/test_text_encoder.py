"""encode_text_until_eot gives open_clip's encode_text features, for every TinyCLIP config."""

from __future__ import annotations

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from vlm_grasp_locator.pipeline.crop_scoring import PROMPT_TEMPLATES
from vlm_grasp_locator.models.registry import (
    DEFAULT_CLIP_MODEL,
    available_clip_models,
    build_tinyclip,
)
from vlm_grasp_locator.models.text_encoder import encode_text_until_eot

PHRASE_BATCHES = [
    ["mug"],
    ["red pen", "mug", "the big shiny metal spoon next to the blue bowl"],
    [t.format("screwdriver") for t in PROMPT_TEMPLATES],
    ["a " * 100],  # longer than the context: the tokenizer puts EOT at the last position
]


@pytest.fixture(scope="module", params=available_clip_models())
def clip(request):
    torch.manual_seed(0)
    return build_tinyclip(request.param).eval()


@pytest.mark.parametrize("phrases", PHRASE_BATCHES, ids=lambda p: f"{len(p)}x{len(p[0])}ch")
@torch.inference_mode()
def test_matches_encode_text(clip, phrases):
    tokens = SimpleTokenizer(context_length=clip.context_length)(phrases)
    want = clip.encode_text(tokens, normalize=True)
    got = encode_text_until_eot(clip, tokens)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(phrases)), atol=1e-5, rtol=0)


@torch.inference_mode()
def test_really_truncates(clip):
    """Positions after the last EOT are never read: changing them changes nothing."""
    tokens = SimpleTokenizer(context_length=clip.context_length)(["red pen", "mug"])
    last = int(tokens.argmax(dim=-1).max())
    garbage = tokens.clone()
    garbage[:, last + 1 :] = 1234
    torch.testing.assert_close(
        encode_text_until_eot(clip, garbage), encode_text_until_eot(clip, tokens)
    )
    torch.testing.assert_close(
        encode_text_until_eot(clip, garbage),
        clip.encode_text(tokens, normalize=True),
        atol=1e-5,
        rtol=0,
    )


@torch.inference_mode()
def test_falls_back_without_causal_mask():
    torch.manual_seed(0)
    clip = build_tinyclip(DEFAULT_CLIP_MODEL).eval()
    clip.attn_mask = None  # bidirectional: padding would matter, so no truncation
    tokens = SimpleTokenizer(context_length=clip.context_length)(["mug"])
    torch.testing.assert_close(
        encode_text_until_eot(clip, tokens), clip.encode_text(tokens, normalize=True)
    )


def test_rejects_unbatched_tokens():
    torch.manual_seed(0)
    clip = build_tinyclip(DEFAULT_CLIP_MODEL).eval()
    with pytest.raises(ValueError):
        encode_text_until_eot(clip, torch.zeros(77, dtype=torch.long))


@torch.inference_mode()
def test_template_prefix_encoder_matches_encode_text(clip):
    from vlm_grasp_locator.models.text_encoder import TemplatePrefixEncoder

    assert TemplatePrefixEncoder.supported(clip)
    tokenizer = SimpleTokenizer(context_length=clip.context_length)
    encoder = TemplatePrefixEncoder(clip, tokenizer, PROMPT_TEMPLATES)
    phrases = [
        "mug",
        "red coffee mug",
        "the big shiny metal spoon next to the blue bowl",
        "a " * 100,
        "café crème",
    ]
    got = encoder.encode(phrases)
    want = clip.encode_text(
        tokenizer([t.format(p) for p in phrases for t in PROMPT_TEMPLATES]), normalize=True
    )
    assert got.shape == (len(phrases), len(PROMPT_TEMPLATES), want.shape[-1])
    torch.testing.assert_close(got.reshape(want.shape), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        encoder.encode(["mug"])[0], got[0], atol=1e-6, rtol=1e-6
    )  # batch-independent


@torch.inference_mode()
def test_template_prefix_encoder_falls_back_when_the_phrase_joins_the_prefix(clip):
    """ "photo{}" with "graph" tokenizes as "photograph", not "photo" + "graph"."""
    from vlm_grasp_locator.models.text_encoder import TemplatePrefixEncoder

    tokenizer = SimpleTokenizer(context_length=clip.context_length)
    templates = ("a photo{} here.", "a photo of a {}.")
    got = TemplatePrefixEncoder(clip, tokenizer, templates).encode(["graph"])
    want = clip.encode_text(tokenizer([t.format("graph") for t in templates]), normalize=True)
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=1e-5)
