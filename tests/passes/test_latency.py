from onnx import helper

from qcal.passes.latency import attribute


def test_profiled_names_map_back_to_the_original_compute_node() -> None:
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["a"], name="/c1/Conv"),
                           helper.make_node("Sigmoid", ["a"], ["s"], name="/Sigmoid"),
                           helper.make_node("Mul", ["a", "s"], ["b"], name="/Mul"),
                           helper.make_node("Gemm", ["b", "w2"], ["y"], name="/fc/Gemm")], "g", [], [])
    assert attribute("/fc/Gemm", g) == "/fc/Gemm"                 # unchanged node
    assert attribute("/c1/Conv_token_3", g) == "/c1/Conv"         # ORT's QDQ -> QLinearConv rename
    assert attribute("b_nchwc", g) == "/c1/Conv"                  # NCHWc conv fused with SiLU, named by output
    assert attribute("x_QuantizeLinear", g) is None               # Q/DQ time is "other"
    assert attribute("/Sigmoid", g) is None
