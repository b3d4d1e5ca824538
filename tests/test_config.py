import pytest

from qcal.config import KeepFloatConfig, Observer, QuantConfig, Target
from qcal.errors import ConfigError
from qcal.runtime.machine import MachineInfo, machine_info


def test_toml_round_trip() -> None:
    cfg = QuantConfig(target=Target.TENSORRT, observer=Observer.ENTROPY, calib_size=32,
                      keep_float=KeepFloatConfig(nodes=("a", "b"), max_nodes=3))
    again = QuantConfig.from_toml(cfg.to_toml())
    assert again == cfg and again.hash() == cfg.hash()
    assert QuantConfig().hash() != cfg.hash()


def test_unknown_key_names_key_and_allowed() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['obsrver'\].*observer"):
        QuantConfig.from_toml('obsrver = "mse"\n')
    with pytest.raises(ConfigError, match=r"keep_float: unknown key\(s\) \['foo'\]"):
        QuantConfig.from_toml("[keep_float]\nfoo = 1\n")


def test_bad_values() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        QuantConfig.from_toml('target = "tpu"\n')
    with pytest.raises(ConfigError, match="multiple of 32"):
        QuantConfig(imgsz=100)
    with pytest.raises(ConfigError, match="opset"):
        QuantConfig(opset=11)
    with pytest.raises(ConfigError, match="expected int"):
        QuantConfig.from_toml('calib_size = "many"\n')


def test_blend_alphas_round_trip_and_validation() -> None:
    cfg = QuantConfig(observer=Observer.BLEND, blend_alphas=[0.0, 0.5])  # type: ignore[arg-type]
    assert cfg.blend_alphas == (0.0, 0.5)
    assert QuantConfig.from_toml(cfg.to_toml()) == cfg
    with pytest.raises(ConfigError, match=r"blend_alphas=\[1.5\].*in \[0, 1\]"):
        QuantConfig(blend_alphas=(1.5,))
    with pytest.raises(ConfigError, match="blend_alphas"):
        QuantConfig(blend_alphas=())
    grouped = QuantConfig(blend_alphas=(0.0, 1.0), blend_groups=3)
    assert QuantConfig.from_toml(grouped.to_toml()) == grouped
    with pytest.raises(ConfigError, match=r"blend_groups=0: must be >= 1"):
        QuantConfig(blend_groups=0)
    with pytest.raises(ConfigError, match=r"blend_groups=4 needs two or more blend_alphas .*got \[0.5\]"):
        QuantConfig(blend_groups=4)


def test_fp16_nodes_round_trip() -> None:
    from qcal.config import KeepFloatConfig

    cfg = QuantConfig(keep_float=KeepFloatConfig(nodes=("/a/Conv",), fp16_nodes=("/a/Conv", "/b/Gemm")))
    again = QuantConfig.from_toml(cfg.to_toml())
    assert again == cfg and again.keep_float.fp16_nodes == ("/a/Conv", "/b/Gemm")


def test_share_concat_ranges_round_trip_validation_and_profile() -> None:
    from qcal.calibration.pipeline import resolve_profile

    off = QuantConfig(share_concat_ranges="off")
    assert QuantConfig.from_toml(off.to_toml()) == off and off.hash() != QuantConfig().hash()
    assert resolve_profile(off).share_concat_ranges == ""
    assert resolve_profile(QuantConfig()).share_concat_ranges == "concat_output"
    assert resolve_profile(QuantConfig(share_concat_ranges="union")).share_concat_ranges == "union"
    assert resolve_profile(QuantConfig(target=Target.TENSORRT)).share_concat_ranges == ""
    with pytest.raises(ConfigError, match=r"share_concat_ranges='max': choose 'concat_output' \(default\)"):
        QuantConfig.from_toml('share_concat_ranges = "max"\n')


VNNI = MachineInfo("vnni host", 2, ("avx2", "avx512_vnni", "avx512f"), "Linux-x86_64")
AVX2 = MachineInfo("avx2 host", 2, ("avx", "avx2", "fma"), "Linux-x86_64")


def test_resolved_fixes_reduce_range_from_the_cpu() -> None:
    auto = QuantConfig()                                     # reduce_range=None: the machine decides
    assert auto.reduce_range is None
    assert auto.resolved(VNNI).reduce_range is False and auto.resolved(AVX2).reduce_range is True
    here = auto.resolved()
    assert here.reduce_range is (not machine_info().has_vnni)
    assert here.resolved() == here and QuantConfig(reduce_range=True).resolved(VNNI).reduce_range is True
    assert QuantConfig(target=Target.TENSORRT).resolved(AVX2).reduce_range is False   # full int8 everywhere


def test_config_hash_is_the_resolved_configs_hash() -> None:
    auto = QuantConfig()
    here = auto.resolved()
    opposite = auto.replace(reduce_range=not here.reduce_range)
    assert auto.hash() == here.hash() and auto.hash() != opposite.hash()
    assert auto.hash(VNNI) != auto.hash(AVX2)                # a VNNI host and an AVX2 host: different hashes
    assert auto.hash(VNNI) == QuantConfig(reduce_range=False).hash()
    assert auto.hash(AVX2) == QuantConfig(reduce_range=True).hash()


def test_the_bench_cache_key_uses_the_resolved_config() -> None:
    from qcal.bench.matrix import static_model_key

    auto = QuantConfig()
    here = auto.resolved()
    opposite = auto.replace(reduce_range=not here.reduce_range)
    key = static_model_key("m" * 64, auto, "c" * 64)
    assert key == static_model_key("m" * 64, here, "c" * 64)
    assert key != static_model_key("m" * 64, opposite, "c" * 64)
