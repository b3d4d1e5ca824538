"""Target profiles: what a QDQ model must look like to be fast and correct where it runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QdqProfile:
    name: str
    activation_dtype: str          # "uint8" | "int8"
    weight_dtype: str              # "int8"
    activation_symmetric: bool     # zero point 0 (signed) when True
    weight_symmetric: bool
    per_channel: bool
    reduce_range: bool             # 7-bit weights for CPUs without VNNI
    min_opset: int
    op_types: tuple[str, ...] | None   # None: every op ORT's QDQ quantizer knows
    weights_as_qdq_pair: bool      # keep weights float with Q->DQ (TensorRT style) instead of int8 initializers
    quantize_bias: bool = True     # int32 biases (ORT CPU); TensorRT fuses float biases itself
    quantize_outputs: bool = True  # Q/DQ on op outputs too (ORT CPU fuses DQ->op->Q); TensorRT wants inputs only
    float_nodes_read_float: bool = False  # nodes kept in float read the float tensor, not a shared DQ output
    rewrites: tuple[str, ...] = ()        # exact graph rewrites for this runtime (exporters.rewrite), in order
    share_concat_ranges: str = ""         # "union" | "concat_output": one range per Concat group (exporters.share)

    def replace(self, **kw: object) -> QdqProfile:
        import dataclasses

        return dataclasses.replace(self, **kw)  # type: ignore[arg-type]


# ORT CPU: u8 activations (asymmetric), s8 symmetric per-channel weights; QLinearConv etc. fuse from DQ->op->Q.
# The DFL softmax rewrite is exact and saves ONNX Runtime CPU a transposing Softmax (see exporters.rewrite);
# shared Concat ranges let its QLinearConcat copy instead of requantizing through a lookup table (exporters.share).
ORT_CPU = QdqProfile("ort-cpu", "uint8", "int8", False, True, True, False, 13, None, False,
                     rewrites=("softmax_weighted_sum",), share_concat_ranges="concat_output")
# TensorRT explicit quantization: s8 symmetric, zero point 0, per-channel weights on the output-channel axis,
# Q/DQ on the inputs TensorRT fuses (conv/gemm, residual add, pooling, resize, concat).
TENSORRT = QdqProfile("tensorrt", "int8", "int8", True, True, True, False, 13,
                      ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "MaxPool", "AveragePool",
                       "GlobalAveragePool", "Resize", "Concat"), True, False, False, True)
PROFILES = {p.name: p for p in (ORT_CPU, TENSORRT)}
