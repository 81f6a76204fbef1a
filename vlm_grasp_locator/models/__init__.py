"""Layer 2, the models (torch): building MobileSAM and TinyCLIP, loading checkpoints
safely, the inference-only rewrites of their modules. Imports only ``core``.
"""
