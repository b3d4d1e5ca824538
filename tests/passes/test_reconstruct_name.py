"""`reconstruct`: the issue's name of the one reconstruction pass (qcal.passes.adaquant) and of its config."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import qcal
from qcal.config import AdaQuantConfig, Granularity, QuantConfig, Rounding
from qcal.errors import ConfigError
from qcal.passes.registry import make_pass
from tests.passes.test_apply import Net, conv_weights


def test_reconstruct_keyword_maps_onto_the_one_adaquant_field_and_round_trips() -> None:
    rc = qcal.ReconstructConfig(granularity="block", rounding="adaround", qdrop=0.5, iters=7)
    cfg = QuantConfig(passes=["reconstruct"], reconstruct=rc)
    assert cfg.adaquant is rc and cfg.passes == ("reconstruct",)
    assert cfg == QuantConfig(passes=("reconstruct",), adaquant=rc)   # one field, equal configs, equal hashes
    assert cfg.hash() == QuantConfig(passes=("reconstruct",), adaquant=rc).hash()
    d = cfg.to_dict()
    assert "reconstruct" not in d and d["adaquant"]["granularity"] == "block"
    assert QuantConfig.from_toml(cfg.to_toml()) == cfg
    assert QuantConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert cfg.replace(seed=3).adaquant is rc   # dataclasses.replace keeps the mapped options


def test_reconstruct_table_in_toml_is_accepted() -> None:
    cfg = QuantConfig.from_toml('passes = ["reconstruct"]\n\n[reconstruct]\ngranularity = "block"\nqdrop = 0.5\n')
    assert cfg.adaquant.granularity is Granularity.BLOCK and cfg.adaquant.qdrop == 0.5
    assert "[adaquant]" in cfg.to_toml() and "[reconstruct]" not in cfg.to_toml()


def test_giving_both_names_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="both reconstruct= and adaquant="):
        QuantConfig(adaquant=AdaQuantConfig(iters=5), reconstruct=AdaQuantConfig(iters=6))
    with pytest.raises(ConfigError, match=r"both \[reconstruct\] and \[adaquant\]"):
        QuantConfig.from_dict({"adaquant": {"iters": 5}, "reconstruct": {"iters": 6}})
    with pytest.raises(ConfigError, match="same pass; list it once"):
        QuantConfig(passes=("adaquant", "reconstruct"))
    with pytest.raises(ConfigError, match="qcal.ReconstructConfig"):
        QuantConfig(reconstruct={"iters": 5})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown key"):
        QuantConfig.from_dict({"reconstruct": {"qdorp": 0.5}})


def test_make_pass_gives_the_same_pass_under_the_name_asked() -> None:
    a, r = make_pass("adaquant"), make_pass("reconstruct", AdaQuantConfig(iters=3))
    assert type(a) is type(r) and (a.name, r.name) == ("adaquant", "reconstruct")
    assert type(a).name == "adaquant"   # the class attribute is untouched


def test_quantize_with_reconstruct_equals_adaquant_and_reports_its_name() -> None:
    net = Net().eval()
    x = torch.zeros(1, 3, 32, 32)
    base = QuantConfig(calib_size=8, keep_float=qcal.KeepFloatConfig(sensitivity_samples=0))
    rc = qcal.ReconstructConfig(iters=10, batch=4, granularity="block", rounding="adaround")
    runs = {name: qcal.quantize(net, calib="bundled:vtest[0:24]", example_input=x, progress=False,
                                config=base.replace(passes=(name,), adaquant=rc))
            for name in ("adaquant", "reconstruct")}
    r = runs["reconstruct"]
    assert [p.name for p in r.passes] == ["reconstruct"] and r.to_dict()["passes"][0]["name"] == "reconstruct"
    assert r.passes[0].changed["granularity"] == "block" and r.to_dict()["config"]["passes"] == ["reconstruct"]
    w_a, w_r = conv_weights(runs["adaquant"].out.fp32_path), conv_weights(r.out.fp32_path)
    assert len(w_a) == 2 and all(np.array_equal(a, b) for a, b in zip(w_a, w_r, strict=True))


def test_cli_passes_reconstruct() -> None:
    from qcal.cli import add_common_args, config_from_args

    p = argparse.ArgumentParser()
    add_common_args(p)
    cfg = config_from_args(p.parse_args(["--passes", "reconstruct", "--granularity", "block", "--rounding", "adaround",
                                "--qdrop", "0.5"]))
    assert cfg.passes == ("reconstruct",)
    assert (cfg.adaquant.granularity, cfg.adaquant.rounding, cfg.adaquant.qdrop) == \
        (Granularity.BLOCK, Rounding.ADAROUND, 0.5)
