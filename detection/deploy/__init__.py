"""Deployment: a trained ``FasterRCNNC4`` as one ONNX or TorchScript file, pixels in, detections out (docs/DEPLOY.md).

``contract`` (the input and output contract, shared by export and runtimes), ``graph`` (the traceable module and
what is exportable), ``parity`` (matching the exported model's detections to the plain model's), ``runtime``
(running an exported file: ONNX Runtime or ``torch.jit.load``), ``export`` (the whole export with its check).
onnx / onnxruntime (``pip install resdet[deploy]``) are imported only inside the functions that need them.
"""
