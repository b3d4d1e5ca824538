"""TOML recipes that would hang, recurse or read anywhere: recipe cycles are refused before anything is built,
naming the chain; a path written in a recipe must stay under the top-level recipe's folder (symlinks followed)
unless allow_outside_root; `repeat = 10**12` builds at once with flat memory and yields the base items in order."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

import calib_sets
from calib_sets import DegradationMix, Recipe, RecipeError, Source
from calib_sets import mix as mix_module
from calib_sets.errors import SetTooLargeError
from calib_sets.recipes import MAX_DEPTH, RECIPES
from calib_sets.sample import EVERY_ITEM_LIMIT

BIG = 10**12


def images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb = np.random.default_rng(i).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        assert cv2.imwrite(str(folder / f"im{i}.png"), rgb)
    return folder


def recipe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- cycles ----------------------------------------------------------------------------------------------------
def test_a_recipe_that_uses_itself_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    # "nowhere" does not exist: building it would raise SourceNotFoundError, so the cycle error proves the check
    # ran first; and no RecursionError
    a = recipe(tmp_path / "a.toml", 'source = ["nowhere", "a.toml"]\n')
    with pytest.raises(RecipeError, match=r"recipe cycle: a\.toml -> a\.toml; .*Remove the source") as e:
        calib_sets.load(a)
    assert not isinstance(e.value, RecursionError)


def test_a_two_file_cycle_names_the_chain(tmp_path: Path) -> None:
    recipe(tmp_path / "a.toml", 'source = ["bundled:vtest[0:6]", "b.toml"]\n')
    recipe(tmp_path / "b.toml", 'source = "a.toml"\n')
    with pytest.raises(RecipeError, match=r"recipe cycle: a\.toml -> b\.toml -> a\.toml; .* from b\.toml"):
        calib_sets.load(tmp_path / "a.toml")
    with pytest.raises(RecipeError, match=r"recipe cycle: b\.toml -> a\.toml -> b\.toml"):
        calib_sets.load(tmp_path / "b.toml")


def test_a_three_file_cycle_across_folders_names_the_chain(tmp_path: Path) -> None:
    recipe(tmp_path / "a.toml", 'source = "sub/b.toml"\n')
    recipe(tmp_path / "sub" / "b.toml", 'source = "../c.toml"\nrepeat = 4\n')
    recipe(tmp_path / "c.toml", 'source = "a.toml"\n')
    with pytest.raises(RecipeError, match=r"recipe cycle: a\.toml -> sub/b\.toml -> c\.toml -> a\.toml"):
        calib_sets.load(tmp_path / "a.toml")
    # the same through Recipe.read(...).build(), the path the benchmark takes
    with pytest.raises(RecipeError, match=r"a\.toml -> sub/b\.toml -> c\.toml -> a\.toml"):
        Recipe.read(tmp_path / "a.toml").build()


def test_a_recipe_used_twice_is_no_cycle(tmp_path: Path) -> None:
    recipe(tmp_path / "leaf.toml", 'source = "bundled:vtest[0:6]"\n')
    recipe(tmp_path / "mid.toml", 'source = ["leaf.toml", "leaf.toml"]\n')
    top = recipe(tmp_path / "top.toml", 'source = ["mid.toml", "leaf.toml"]\n')
    leaf = calib_sets.load(tmp_path / "leaf.toml")
    assert len(calib_sets.load(top)) == 3 * len(leaf) == 6


def test_nesting_depth_and_recipe_count_are_bounded(tmp_path: Path) -> None:
    for i in range(MAX_DEPTH + 2):
        recipe(tmp_path / f"r{i}.toml", f'source = "r{i + 1}.toml"\n')
    recipe(tmp_path / f"r{MAX_DEPTH + 2}.toml", 'source = "bundled:vtest[0:3]"\n')
    with pytest.raises(RecipeError, match=f"nest more than {MAX_DEPTH} deep: r0.toml -> r1.toml"):
        calib_sets.load(tmp_path / "r0.toml")
    # a "billion laughs" of recipes: each uses the next one 4 times -> 4**10 uses; refused before building
    for i in range(10):
        recipe(tmp_path / f"x{i}.toml", f'source = {[f"x{i + 1}.toml"] * 4}\n'.replace("'", '"'))
    recipe(tmp_path / "x10.toml", 'source = "bundled:vtest[0:3]"\n')
    with pytest.raises(RecipeError, match="more than 256 recipes in all"):
        calib_sets.load(tmp_path / "x0.toml")


# --- paths -----------------------------------------------------------------------------------------------------
def test_a_path_escaping_the_root_is_refused_unless_allowed(tmp_path: Path) -> None:
    outside = images(tmp_path / "outside")
    root = tmp_path / "proj"
    r = recipe(root / "r.toml", 'source = "../outside"\n')
    with pytest.raises(RecipeError) as e:
        calib_sets.load(r)
    msg = str(e.value)
    assert "'../outside'" in msg and str(outside.resolve()) in msg and f"recipe root {root.resolve()}" in msg
    assert "allow_outside_root=True" in msg and "--allow-outside-recipe-root" in msg
    assert len(calib_sets.load(r, allow_outside_root=True)) == 3
    assert len(Recipe.read(r).build(allow_outside_root=True)) == 3
    # a spec the caller gives is not a recipe path: it may point anywhere
    assert len(calib_sets.load(outside)) == 3 and len(calib_sets.load([str(outside), "bundled:vtest[0:3]"])) == 4


def test_absolute_and_imagefolder_paths_in_a_recipe_are_checked_too(tmp_path: Path) -> None:
    outside = images(tmp_path / "outside" / "cls")
    root = tmp_path / "proj"
    for src in (str(outside), "imagefolder:../outside", f"imagefolder:{outside.parent}"):
        r = recipe(root / "r.toml", f'source = "{src}"\n')
        with pytest.raises(RecipeError, match="outside the recipe root"):
            calib_sets.load(r)
    images(root / "data" / "cls")
    r = recipe(root / "r.toml", 'source = "imagefolder:data"\n')  # relative to the recipe, not the cwd
    cs = calib_sets.load(r)
    assert len(cs) == 3 and {it.source for it in cs.items()} == {f"imagefolder:{root / 'data'}"}


def test_a_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    outside = images(tmp_path / "outside")
    root = tmp_path / "proj"
    root.mkdir()
    inside = images(root / "real")
    try:
        os.symlink(outside, root / "link", target_is_directory=True)
        os.symlink(inside, root / "alias", target_is_directory=True)
    except OSError:
        pytest.skip("this file system cannot make symlinks")
    r = recipe(root / "r.toml", 'source = "link"\n')
    with pytest.raises(RecipeError, match=rf"'link' resolves to {outside.resolve()}, outside the recipe root"):
        calib_sets.load(r)
    assert len(calib_sets.load(r, allow_outside_root=True)) == 3
    recipe(root / "r.toml", 'source = "alias"\n')  # a symlink that stays inside is fine
    assert len(calib_sets.load(r)) == 3


def test_nested_recipes_are_checked_against_the_top_level_root(tmp_path: Path) -> None:
    images(tmp_path / "outside")
    root = tmp_path / "proj"
    images(root / "imgs")
    recipe(root / "sub" / "ok.toml", 'source = "../imgs"\n')  # outside sub/, inside the top-level root
    assert len(calib_sets.load(recipe(root / "top.toml", 'source = "sub/ok.toml"\n'))) == 3
    recipe(root / "sub" / "bad.toml", 'source = "../../outside"\n')
    top = recipe(root / "top.toml", 'source = ["bundled:vtest[0:3]", "sub/bad.toml"]\n')
    with pytest.raises(RecipeError, match=r"sub/bad\.toml: source '\.\./\.\./outside' resolves to"):
        calib_sets.load(top)
    assert len(calib_sets.load(top, allow_outside_root=True)) == 4
    # the bundled recipes (a bare name, or a path naming one) keep working, from anywhere
    assert len(calib_sets.load("vtest-clean.toml")) == len(calib_sets.load(RECIPES / "vtest-clean.toml")) > 0
    nested = recipe(root / "n.toml", 'source = "vtest-clean.toml"\nrepeat = 2\n')  # not in proj/: the bundled one
    assert len(calib_sets.load(nested)) == 2


# --- lazy repeat -----------------------------------------------------------------------------------------------
def test_repeat_of_a_trillion_builds_at_once_with_flat_memory(tmp_path: Path) -> None:
    base = Source.images(images(tmp_path / "imgs"))
    r = recipe(tmp_path / "r.toml", f'source = "imgs"\nrepeat = {BIG}\n')
    tracemalloc.start()
    try:
        cs = calib_sets.load(r)
        first = [cs[i] for i in range(7)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(cs) == BIG and peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    want = [s.key for s in base] * 2 + [base[0].key]
    assert [s.key for s in first] == [k if i < 3 else f"{k}#rep={i // 3}" for i, k in enumerate(want)]
    for i, s in enumerate(first):
        assert np.array_equal(s.image, base[i % 3].image)
    last = cs.items_view()[-1]
    assert last.key == f"{base.keys()[(BIG - 1) % 3]}#rep={(BIG - 1) // 3}"
    # the first items are those of a small repeat, digests included
    assert cs.take(8).content_hash == base.repeat(8).content_hash
    assert [s.key for s in cs.take(4)] == base.repeat(4).keys()


def test_whole_set_operations_on_a_huge_repeat_are_refused_by_name(tmp_path: Path) -> None:
    cs = Source.images(images(tmp_path / "imgs")).repeat(BIG)
    for op in (lambda: cs.content_hash, lambda: cs.manifest, cs.items, cs.keys, cs.conditions):
        with pytest.raises(SetTooLargeError, match=rf"holds {BIG} \(repeat={BIG}\); at most {EVERY_ITEM_LIMIT}"):
            op()
    assert isinstance(SetTooLargeError("x"), RecipeError)
    with pytest.raises(calib_sets.CalibSetError, match="n must be an integer from 0 to"):
        cs.repeat(10**20)  # beyond what len() can return
    assert len(cs.take(EVERY_ITEM_LIMIT + 1)) == EVERY_ITEM_LIMIT + 1  # taking is lazy too
    assert "conditions=['clean']" in repr(cs)


def test_a_mix_after_a_huge_repeat_stays_lazy_and_deterministic(tmp_path: Path) -> None:
    imgs = images(tmp_path / "imgs")
    r = recipe(tmp_path / "r.toml", f'source = "{imgs.name}"\nrepeat = {BIG}\n[mix]\npreset = "qrid"\nseed = 3\n')
    tracemalloc.start()
    try:
        cs = calib_sets.load(r)
        head = [cs[i] for i in range(10)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(cs) == BIG and peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    again = calib_sets.load(r)
    assert [s.key for s in head] == [again[i].key for i in range(10)]
    assert all(np.array_equal(a.image, again[i].image) for i, a in enumerate(head))
    assert cs.take(64).content_hash == again.take(64).content_hash
    # degraded items carry their condition and per-position seed; clean ones are the base items
    base = Source.images(imgs)
    for i, s in enumerate(head):
        if s.condition == "clean":
            assert np.array_equal(s.image, base[i % 3].image)
        else:
            assert s.key.endswith(f"@{s.condition}") and s.params.get("seed", mix_module.sample_seed(3, i)) == \
                mix_module.sample_seed(3, i)
    assert {s.condition for s in cs.take(200)} > {"clean"}


def test_the_large_set_permutation_is_a_bijection_with_exact_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond PERMUTATION_LIMIT the mix uses a Feistel bijection: same exact counts as the array one."""
    monkeypatch.setattr(mix_module, "PERMUTATION_LIMIT", 16)
    for n in (17, 1000, 4097):
        perm = mix_module.permutation_of(n, seed=5)
        assert sorted(perm(i) for i in range(n)) == list(range(n))
        mix = DegradationMix.qrid(clean=0.3)
        got = mix.assignment(n, seed=5)
        names = ["clean" if c is None else c.name for c in got]
        assert {k: names.count(k) for k in mix.counts(n)} == mix.counts(n)
        assert got != mix.assignment(n, seed=6)


def test_small_recipes_keep_their_hashes() -> None:
    """Pinned from the eager implementation (before repeat and the mix became lazy views)."""
    assert calib_sets.load(RECIPES / "vtest-qrid-512.toml").content_hash == \
        "5435fe67aa4f0f6fedc0ac53d43fe637900c20ab143f20c7601f11867f67481c"
    assert calib_sets.load(RECIPES / "vtest-qrid.toml").content_hash == \
        "68d95228cbeb2a5d5af6c86257d8b80198a6dd51158642e801263faf4845152d"


def test_a_nested_huge_repeat_can_be_sampled_but_not_diversified(tmp_path: Path) -> None:
    images(tmp_path / "imgs")
    recipe(tmp_path / "big.toml", f'source = "imgs"\nrepeat = {BIG}\n')
    top = recipe(tmp_path / "top.toml", 'source = "big.toml"\nimgsz = 16\n[select]\nn = 4\nstrategy = "random"\n')
    cs = calib_sets.load(top)
    assert len(cs) == 4 and all(max(s.image.shape[:2]) == 16 for s in cs) and len(cs.content_hash) == 64
    recipe(tmp_path / "top.toml", 'source = "big.toml"\n[select]\nn = 4\nstrategy = "diverse"\n')
    with pytest.raises(SetTooLargeError, match=rf"top\.toml: \[select\] strategy='diverse' decodes every sample.*hold {BIG}"):
        calib_sets.load(top)


def test_the_cli_refuses_an_escaping_recipe_in_a_second_and_takes_the_flag(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import qcal.api
    from qcal.cli import main

    images(tmp_path / "outside")
    r = recipe(tmp_path / "proj" / "r.toml", 'source = "../outside"\n')
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"\x80\x02")
    argv = ["quantize", str(ckpt), "--trust-checkpoint", "--calib", str(r), "-o", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--calib" in err and "../outside" in err and "--allow-outside-recipe-root" in err
    seen = {}

    def fake_quantize(model: object, calib: object = None, **kw: object) -> None:   # stop before the real work
        seen["calib"] = calib
        raise qcal.errors.CalibrationError("stop here")

    monkeypatch.setattr(qcal.api, "quantize", fake_quantize)
    assert main([*argv, "--allow-outside-recipe-root"]) == 2
    assert isinstance(seen["calib"], calib_sets.CalibSet) and len(seen["calib"]) == 3   # the set loaded once, passed on
    assert not (tmp_path / "out").exists()
