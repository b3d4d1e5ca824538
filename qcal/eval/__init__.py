"""Task metrics (COCO-style detection mAP, FP32 agreement) and latency measurement."""
