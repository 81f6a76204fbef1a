"""The torch models behind the pipeline's protocols (``interfaces``).

``SamSegmenter`` serves any mobile_sam ``Sam`` whose image encoder maps preprocessed
pixels to features (the torch TinyViT, or ``backends.onnx_runtime``'s session wrapper)
with the ``MaskDecoder`` its backend chose. ``OpenClipModel`` serves an open_clip CLIP.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from vlm_grasp_locator.models.interfaces import EncodedImage, LoadedModels, MaskDecoder
from vlm_grasp_locator.models.registry import TorchModels
from vlm_grasp_locator.models.sam_decoder import FastMaskDecoder
from vlm_grasp_locator.models.text_encoder import TemplatePrefixEncoder, encode_text_until_eot


class SamSegmenter:
    """A mobile_sam ``Sam`` as an ``interfaces.Segmenter``.

    ``decoder`` decodes the prompts; ``generator_model`` is the module mobile_sam's own
    automatic mask generator may run (``crop_n_layers > 0``), None where it cannot.
    """

    def __init__(
        self,
        sam: torch.nn.Module,
        decoder: MaskDecoder,
        generator_model: Optional[torch.nn.Module],
    ) -> None:
        from mobile_sam.utils.transforms import ResizeLongestSide

        self.sam = sam
        self.decoder = decoder
        self.generator_model = generator_model
        self.device: torch.device = sam.device
        self.img_size: int = int(sam.image_encoder.img_size)
        self.mask_threshold = float(sam.mask_threshold)
        self.transform = ResizeLongestSide(self.img_size)

    @classmethod
    def of_torch(cls, sam: torch.nn.Module) -> "SamSegmenter":
        """The torch MobileSAM with the reorganised decoder (``sam_decoder``)."""
        return cls(sam, FastMaskDecoder(sam.mask_decoder), generator_model=sam)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> EncodedImage:
        """As mobile_sam's ``SamPredictor.set_image``, returned instead of kept."""
        resized = self.transform.apply_image(image)
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        features = self.sam.image_encoder(self.sam.preprocess(pixels))
        h, w = pixels.shape[-2:]
        return EncodedImage(features, (int(h), int(w)), (int(image.shape[0]), int(image.shape[1])))

    def to_input_coords(self, points_xy: np.ndarray, original_size: Tuple[int, int]) -> np.ndarray:
        return self.transform.apply_coords(points_xy, original_size)

    def embed_points(self, points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        labels = torch.ones(len(points), dtype=torch.int, device=self.device)
        return self.sam.prompt_encoder(
            points=(points[:, None, :], labels[:, None]), boxes=None, masks=None
        )

    def embed_prompt(
        self, points: Optional[torch.Tensor], labels: Optional[torch.Tensor], box: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        # With a box, mobile_sam's prompt encoder adds no padding point: K + 2 tokens.
        return self.sam.prompt_encoder(
            points=None if points is None else (points, labels), boxes=box, masks=None
        )

    def dense_pe(self) -> torch.Tensor:
        return self.sam.prompt_encoder.get_dense_pe()


def clip_embedding_dim(clip: torch.nn.Module) -> int:
    """Width of an open_clip model's joint image-text embedding."""
    projection = getattr(clip, "text_projection", None)
    if isinstance(projection, torch.nn.Linear):
        return projection.out_features
    if projection is not None:
        return int(projection.shape[1])
    return int(clip.embed_dim)


class OpenClipModel:
    """An open_clip CLIP as an ``interfaces.ImageTextModel``.

    Texts run only as far as their end-of-text token, and the templates' fixed beginnings
    are computed once per template set (``text_encoder``) where the tower allows it.
    """

    def __init__(self, clip: torch.nn.Module, device: torch.device) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.module = clip
        self.device = device
        self.embed_dim = clip_embedding_dim(clip)
        self.tokenizer = SimpleTokenizer(context_length=clip.context_length)
        self._prefixes: Dict[Tuple[str, ...], TemplatePrefixEncoder] = {}

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().clamp(max=100.0))

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        if len(pixels) == 0:
            return torch.zeros((0, self.embed_dim), device=self.device)
        return self.module.encode_image(pixels.to(self.device), normalize=True).float()

    @torch.inference_mode()
    def encode_phrases(self, phrases: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        key = tuple(templates)
        if TemplatePrefixEncoder.supported(self.module):
            if key not in self._prefixes:
                self._prefixes[key] = TemplatePrefixEncoder(self.module, self.tokenizer, key)
            return self._prefixes[key].encode(phrases).float()
        texts = [t.format(p) for p in phrases for t in key]
        tokens = self.tokenizer(texts).to(self.device)
        features = encode_text_until_eot(self.module, tokens).float()
        return features.view(len(phrases), len(key), -1)


def torch_parts(models: TorchModels) -> LoadedModels:
    """The torch backend's models behind the pipeline's protocols (weights shared)."""
    return LoadedModels(
        segmenter=SamSegmenter.of_torch(models.sam),
        clip=OpenClipModel(models.clip, models.device),
        clip_name=models.clip_name,
        device=models.device,
        random_weights=models.random_weights,
    )
