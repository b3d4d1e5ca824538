"""The machine and the files around a run: output sets, machine info, the third-party environment, and the
TensorRT engines and caches written beside an export."""
