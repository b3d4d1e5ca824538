"""Small hand-made Q/DQ graphs for the TensorRT lint tests: one that follows every rule, and mutations of it
that break exactly one rule each."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(arr, name)


def conforming(**mut: object) -> onnx.ModelProto:
    """x -Q/DQ-> Conv1(W1 per-channel) -> Relu -Q/DQ-> Conv2 -> Add(+DQ residual) -Q/DQ-> Concat(residual, add).

    Keyword mutations (each breaks one rule): act_zp_dtype, act_zp, act_scale, scale_from_node, w_per_tensor,
    w_axis, opset, conv2_float_act, q_on_conv_output, add_float_input, concat_float_input, q_feeds_relu,
    dq_scale_mismatch, integer_op.
    """
    rng = np.random.default_rng(0)
    zp_dtype = mut.get("act_zp_dtype", np.int8)
    act_zp = np.array(mut.get("act_zp", 0), dtype=zp_dtype)  # type: ignore[call-overload]
    act_scale = np.array(mut.get("act_scale", 0.02), dtype=np.float32)  # type: ignore[call-overload]
    inits = [_init("s_act", act_scale), _init("zp_act", act_zp), _init("zp_i8", np.array(0, np.int8)),
             _init("s_x", np.array(1 / 127, np.float32))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "zp_i8"], ["x_q"], name="x_Q"),
             helper.make_node("DequantizeLinear", ["x_q", "s_x", "zp_i8"], ["x_dq"], name="x_DQ")]
    for i, (cout, cin) in enumerate(((4, 3), (4, 4)), start=1):
        w = rng.normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32)
        per_tensor = bool(mut.get("w_per_tensor"))
        ws = np.array(0.01, np.float32) if per_tensor else (np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32)
        wz = np.zeros(() if per_tensor else cout, np.int8)
        inits += [_init(f"W{i}", w), _init(f"W{i}_s", ws), _init(f"W{i}_z", wz), _init(f"B{i}", np.zeros(cout, np.float32))]
        axis = {} if per_tensor else {"axis": int(mut.get("w_axis", 0))}  # type: ignore[call-overload]
        nodes += [helper.make_node("QuantizeLinear", [f"W{i}", f"W{i}_s", f"W{i}_z"], [f"W{i}_q"], name=f"W{i}_Q", **axis),
                  helper.make_node("DequantizeLinear", [f"W{i}_q", f"W{i}_s", f"W{i}_z"], [f"W{i}_dq"], name=f"W{i}_DQ",
                                   **axis)]
    scale_in = "s_act"
    if mut.get("scale_from_node"):
        nodes.append(helper.make_node("Mul", ["s_act", "s_act"], ["s_dyn"], name="scale_mul"))
        scale_in = "s_dyn"
    nodes.append(helper.make_node("Conv", ["x_dq", "W1_dq", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]))
    relu_in = "c1"
    if mut.get("q_on_conv_output"):
        nodes += [helper.make_node("QuantizeLinear", ["c1", "s_act", "zp_i8"], ["c1_q"], name="c1_Q"),
                  helper.make_node("DequantizeLinear", ["c1_q", "s_act", "zp_i8"], ["c1_dq"], name="c1_DQ")]
        relu_in = "c1_dq"
    nodes.append(helper.make_node("Relu", [relu_in], ["r1"], name="relu"))
    dq_scale = "s_bad" if mut.get("dq_scale_mismatch") else scale_in
    inits.append(_init("s_bad", np.array(0.05, np.float32)))
    nodes += [helper.make_node("QuantizeLinear", ["r1", scale_in, "zp_act"], ["r1_q"], name="r1_Q"),
              helper.make_node("DequantizeLinear", ["r1_q", dq_scale, "zp_act"], ["r1_dq"], name="r1_DQ")]
    if mut.get("q_feeds_relu"):
        nodes.append(helper.make_node("Relu", ["r1_q"], ["bad_relu"], name="relu_on_int8"))
    conv2_in = "r1" if mut.get("conv2_float_act") else "r1_dq"
    nodes.append(helper.make_node("Conv", [conv2_in, "W2_dq", "B2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]))
    add_res = "r1" if mut.get("add_float_input") else "r1_dq"
    add_first = "c2"
    if mut.get("add_float_input"):  # the non-residual input through a Relu, so no Conv+Add fusion excuses it
        nodes.append(helper.make_node("Relu", ["c2"], ["c2r"], name="relu2"))
        nodes += [helper.make_node("QuantizeLinear", ["c2r", "s_x", "zp_i8"], ["c2r_q"], name="c2r_Q"),
                  helper.make_node("DequantizeLinear", ["c2r_q", "s_x", "zp_i8"], ["c2r_dq"], name="c2r_DQ")]
        add_first = "c2r_dq"
    nodes.append(helper.make_node("Add", [add_first, add_res], ["a"], name="add"))
    nodes += [helper.make_node("QuantizeLinear", ["a", "s_x", "zp_i8"], ["a_q"], name="a_Q"),
              helper.make_node("DequantizeLinear", ["a_q", "s_x", "zp_i8"], ["a_dq"], name="a_DQ")]
    cat_first = "r1" if mut.get("concat_float_input") else "r1_dq"
    nodes.append(helper.make_node("Concat", [cat_first, "a_dq"], ["y"], name="concat", axis=1))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])]
    if mut.get("integer_op"):
        nodes.append(helper.make_node("DynamicQuantizeLinear", ["x"], ["xq8", "xs", "xz"], name="dynq"))
        outputs.append(helper.make_tensor_value_info("xq8", TensorProto.UINT8, None))
    if mut.get("q_feeds_relu"):
        outputs.append(helper.make_tensor_value_info("bad_relu", TensorProto.INT8, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, inits)
    opset = int(mut.get("opset", 17))  # type: ignore[call-overload]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model
