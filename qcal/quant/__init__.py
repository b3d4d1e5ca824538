"""Pure quantization primitives and streaming range observers (numpy only, testable without a model)."""
