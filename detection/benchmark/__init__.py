"""Speed measurements behind ``tools/benchmark.py``: GEMM limit, detector inference/training, classification,
data loading and COCO evaluation, each measured side by side (interleaved repeats, medians) in one process."""
