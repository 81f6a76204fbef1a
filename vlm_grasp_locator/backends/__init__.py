"""Layer 4, inference backends chosen by name: ``torch`` (the models as built) and
``onnxruntime`` (graphs written by ``export-onnx``).

``factory.build_locator(config)`` (and ``factory.load``) is the one place a backend is
chosen; each satisfies the pipeline's protocols (``models.interfaces``).
"""
