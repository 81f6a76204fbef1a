"""The one place a backend is chosen: ``load(config)`` and ``build_locator(config)``.

``LOADERS`` maps each ``Backend`` to the function that loads its models behind the
pipeline's protocols (``models.interfaces.LoadedModels``). The pipeline never imports
this layer: entry points (the node, the CLI, the benchmark, the demo) call
``build_locator`` after ``runtime.process.configure_process``.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable, Dict, Optional, Union

from vlm_grasp_locator.models.interfaces import LoadedModels
from vlm_grasp_locator.models.registry import resolve_device
from vlm_grasp_locator.pipeline.locator import Backend, Locator, LocatorConfig
from vlm_grasp_locator.runtime.cpu_features import check_precision
from vlm_grasp_locator.runtime.cpu_threads import CpuWorkers
from vlm_grasp_locator.runtime.process import configured_workers

Loader = Callable[[LocatorConfig], LoadedModels]


def load_torch(config: LocatorConfig) -> LoadedModels:
    """MobileSAM and TinyCLIP in torch, from their checkpoints (``models.registry``)."""
    from vlm_grasp_locator.models.adapters import torch_parts
    from vlm_grasp_locator.models.registry import load_models

    return torch_parts(load_models(**config.model_kwargs()))


def load_onnxruntime(config: LocatorConfig) -> LoadedModels:
    """The graphs ``export-onnx`` wrote into ``config.onnx_dir``, run by ONNX Runtime."""
    from vlm_grasp_locator.backends.onnx_runtime import load_onnx_models

    return load_onnx_models(
        device=config.device,
        clip_model=config.clip_model,
        mobile_sam_checkpoint=config.mobile_sam_checkpoint,
        clip_checkpoint=config.clip_checkpoint,
        allow_random_weights=config.allow_random_weights,
        seed=config.seed,
        onnx_dir=config.onnx_dir,
    )


LOADERS: Dict[Backend, Loader] = {
    Backend.TORCH: load_torch,
    Backend.ONNXRUNTIME: load_onnxruntime,
}


def load(config: LocatorConfig) -> LoadedModels:
    """Validate ``config`` and load the models of ``config.backend``.

    Raises ``ValueError`` for a bad config (``PrecisionError`` for bf16 on a CPU without
    native bf16) and ``CheckpointError`` (``OnnxExportError`` for the ONNX export) when the
    weights cannot be loaded.
    """
    config.validate()
    # Before the models load: bf16 on a CPU that would emulate it is refused.
    check_precision(config.precision, resolve_device(config.device))
    return LOADERS[Backend(config.backend)](config)


class _Workers(Enum):
    CONFIGURED = "the workers runtime.process.configure_process made"


CONFIGURED = _Workers.CONFIGURED


def build_locator(
    config: LocatorConfig, *, workers: Union[CpuWorkers, None, _Workers] = CONFIGURED
) -> Locator:
    """A ``Locator`` on the models of ``config.backend`` (``load``).

    ``workers``: the decoder's CPU threads; by default the ones the entry point's
    ``configure_process`` made (none if it was not called: batches run inline); None
    runs them inline. Changes no process-wide state.
    """
    chosen: Optional[CpuWorkers] = configured_workers() if workers is CONFIGURED else workers
    return Locator.from_models(config, load(config), chosen)
