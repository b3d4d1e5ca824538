from __future__ import annotations

from pathlib import Path

import pytest

import calib_sets
from calib_sets import Recipe, RecipeError
from calib_sets.recipes import RECIPES, bundled_recipes


def test_bundled_recipes_build() -> None:
    assert {"vtest-clean", "vtest-qrid", "vtest-qrid-512"} <= set(bundled_recipes())
    clean = calib_sets.load(RECIPES / "vtest-clean.toml")
    assert set(clean.conditions()) == {"clean"} and all(it.index < 360 for it in clean.items())
    qrid = calib_sets.load(RECIPES / "vtest-qrid.toml")
    assert len(qrid) == len(clean) and qrid.conditions().count("clean") == round(len(qrid) / 2)
    assert set(qrid.conditions()) == {"clean", *calib_sets.QRID}
    assert calib_sets.load("vtest-qrid.toml").content_hash == qrid.content_hash  # bare name finds the bundled one
    s = qrid[0]
    assert max(s.image.shape[:2]) == 640
    big = calib_sets.load(RECIPES / "vtest-qrid-512.toml")
    assert len(big) == 512 and big.conditions().count("clean") == 256
    # the explicit vtest-qrid conditions equal the preset's
    assert Recipe.read(RECIPES / "vtest-qrid.toml").mix == calib_sets.DegradationMix.qrid(0.5)


def test_round_trip_and_hash_follow_the_text(tmp_path: Path) -> None:
    r = Recipe.read(RECIPES / "vtest-qrid.toml")
    assert Recipe.from_toml(r.to_toml()) == r
    p = r.write(tmp_path / "r.toml")
    assert calib_sets.load(p).content_hash == calib_sets.load(RECIPES / "vtest-qrid.toml").content_hash
    p.write_text(p.read_text().replace("seed = 0", "seed = 1"))
    assert calib_sets.load(p).content_hash != calib_sets.load(RECIPES / "vtest-qrid.toml").content_hash


def test_relative_sources_and_select(tmp_path: Path, folder: Path) -> None:
    (tmp_path / "r.toml").write_text(f'source = ["{folder.name}", "bundled:vtest[0:30]"]\n'
                                     '[select]\nn = 4\nstrategy = "stratified"\n')
    cs = calib_sets.load(tmp_path / "r.toml")
    assert len(cs) == 4 and {it.source for it in cs.items()} == {str(folder), "bundled:vtest"}


@pytest.mark.parametrize(("text", "match"), [
    ('source = "bundled:vtest"\nimgzs = 640\n', r"unknown key\(s\) \['imgzs'\]; allowed: \['imgsz', 'mix', 'name'"),
    ('source = "bundled:vtest"\n[select]\nn = 3\nstrat = "random"\n', r"\[select\]: unknown key\(s\) \['strat'\]"),
    ('source = "bundled:vtest"\n[select]\nstrategy = "random"\n', "missing 'n'"),
    ('source = "bundled:vtest"\n[select]\nn = 3\nstrategy = "best"\n', "strategy='best'; allowed"),
    ('source = "bundled:vtest"\n[mix]\nclean = 0.5\nwieghts = {}\n', r"\[mix\]: unknown key\(s\) \['wieghts'\]"),
    ('source = "bundled:vtest"\n[mix]\npreset = "foggy"\n', "preset='foggy'"),
    ('source = "bundled:vtest"\n[mix]\n[mix.weights]\nfog = 1.0\n', "unknown condition 'fog'"),
    ('source = "bundled:vtest"\n[mix]\n[mix.conditions.x]\nsteps = [{kind = "jpeg", quality = 0}]\n',
     "quality=0 is out of range"),
    ('source = "bundled:vtest"\n[mix]\n[mix.conditions.x]\nsteps = [{kind = "jpeg"}]\nextra = 1\n',
     "must be"),
    ('source = "bundled:vtest"\nimgsz = -5\n', "imgsz=-5 must be a positive integer"),
    ('imgsz = 640\n', "missing 'source'"),
    ('source = "bundled:vtest"\nimgsz = \n', "not valid TOML"),
])
def test_bad_recipes_name_the_key(text: str, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        Recipe.from_toml(text)


def test_missing_recipe(tmp_path: Path) -> None:
    with pytest.raises(calib_sets.SourceNotFoundError, match="vtest-qrid"):
        calib_sets.load(tmp_path / "missing.toml")


def test_benchmark_recipe_equals_the_code_path() -> None:
    """benchmarks/calib_sets_bench.py builds in code what recipes/vtest-qrid-512.toml describes."""
    from calib_sets import DegradationMix, Source

    code = DegradationMix.qrid(clean=0.5).apply(Source.bundled("vtest").resized(640).repeat(512), seed=0)
    assert code.content_hash == calib_sets.load(RECIPES / "vtest-qrid-512.toml").content_hash
