"""Layer 4, inference backends chosen by name: ``torch`` (the models as built) and
``onnxruntime`` (graphs written by ``export-onnx``).
"""
