"""Execution of quantized graphs: the torch INT8 simulator, ONNX graph analysis, probe scoring."""
