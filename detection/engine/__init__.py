"""Detection training loop, inference/evaluation, and drawing of detections."""
