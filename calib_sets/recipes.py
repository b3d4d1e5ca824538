"""TOML recipes: a calibration set described in a file (sources, resize, selection, repeat, degradation mix).

    name = "vtest-qrid"
    source = "bundled:vtest[0:360]"     # or a list; anything load() takes; relative paths are relative to this file
    imgsz = 640                         # resize the long side before degrading (units are model pixels)
    repeat = 512                        # optional: cycle the (selected) set to this many samples
    [select]                            # optional
    n = 256
    strategy = "diverse"                # random | stratified | diverse
    seed = 0
    by = "source"                       # stratified only: source | condition | class
    [mix]                               # optional
    preset = "qrid"                     # optional: start from the QRID conditions with equal weights
    clean = 0.5
    seed = 0
    [mix.weights]                       # optional: relative weight per condition
    [mix.conditions.my_blur]            # optional: define a condition by its steps
    steps = [{ kind = "gaussian_blur", sigma = 1.5 }]

Build order: sources -> resize -> select -> repeat -> mix. Unknown keys are errors naming the allowed ones.

`load(spec)` lives here too (calib_sets.spec re-exports it): a recipe's sources are specs and a spec may be a
recipe, so the two recurse into each other and stay in one module rather than two that import each other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calib_sets import toml_io
from calib_sets.errors import DegradationParamError, RecipeError, SourceNotFoundError
from calib_sets.mix import DegradationMix
from calib_sets.sample import CalibSet
from calib_sets.select import select
from calib_sets.sources import Source
from calib_sets.video import VIDEO_EXTS

RECIPES = Path(__file__).parent / "recipes"
STRATEGIES = ("random", "stratified", "diverse")


@dataclass(frozen=True)
class SelectSpec:
    n: int
    strategy: str = "random"
    seed: int = 0
    by: str = "source"

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n <= 0:
            raise RecipeError(f"[select]: n={self.n!r} must be a positive integer.")
        if self.strategy not in STRATEGIES:
            raise RecipeError(f"[select]: strategy={self.strategy!r}; allowed: {list(STRATEGIES)}.")
        if self.by not in ("source", "condition", "class"):
            raise RecipeError(f"[select]: by={self.by!r}; allowed: ['class', 'condition', 'source'].")


@dataclass(frozen=True)
class Recipe:
    source: tuple[str, ...]
    imgsz: int | None = None
    select: SelectSpec | None = None
    repeat: int | None = None
    mix: DegradationMix | None = None
    seed: int = 0               # the mix's seed
    name: str = ""
    base_dir: Path | None = field(default=None, compare=False)  # where relative source paths start

    def __post_init__(self) -> None:
        if not self.source or not all(isinstance(s, str) and s for s in self.source):
            raise RecipeError(f"recipe {self.name!r}: source must be a non-empty string or list of strings.")
        for key in ("imgsz", "repeat", "seed"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "seed" else 1)):
                raise RecipeError(f"recipe {self.name!r}: {key}={v!r} must be a "
                                  f"{'non-negative' if key == 'seed' else 'positive'} integer.")

    def _resolve(self, spec: str) -> str:
        if spec.startswith("bundled:") or self.base_dir is None or Path(spec).is_absolute():
            return spec
        return str(self.base_dir / spec)

    def build(self) -> CalibSet:
        cs = load([self._resolve(s) for s in self.source])
        if self.imgsz is not None:
            cs = cs.resized(self.imgsz)
        if self.select is not None:
            sel = self.select
            cs = select(cs, sel.n, strategy=sel.strategy, seed=sel.seed, by=sel.by)  # type: ignore[arg-type]
        if self.repeat is not None:
            cs = cs.repeat(self.repeat)
        if self.mix is not None:
            cs = self.mix.apply(cs, seed=self.seed)
        return cs

    # --- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name} if self.name else {}
        d["source"] = self.source[0] if len(self.source) == 1 else list(self.source)
        for key in ("imgsz", "repeat"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.select is not None:
            s = self.select
            d["select"] = {"n": s.n, "strategy": s.strategy, "seed": s.seed, "by": s.by}
        if self.mix is not None:
            m = self.mix.to_dict()
            d["mix"] = {"clean": m["clean"], "seed": self.seed, "weights": m["weights"], "conditions": m["conditions"]}
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any], base_dir: Path | None = None, where: str = "recipe") -> Recipe:
        toml_io.check_keys(d, {"name", "source", "imgsz", "repeat", "select", "mix"}, where)
        if "source" not in d:
            raise RecipeError(f"{where}: missing 'source' (e.g. source = \"bundled:vtest\" or a folder path).")
        src = d["source"]
        source = (src,) if isinstance(src, str) else tuple(src) if isinstance(src, list) else ()
        sel = None
        if "select" in d:
            s = d["select"]
            if not isinstance(s, Mapping):
                raise RecipeError(f"{where}: [select] must be a table.")
            toml_io.check_keys(s, {"n", "strategy", "seed", "by"}, f"{where} [select]")
            if "n" not in s:
                raise RecipeError(f"{where} [select]: missing 'n' (how many samples to keep).")
            sel = SelectSpec(s["n"], s.get("strategy", "random"), s.get("seed", 0), s.get("by", "source"))
        mix, seed = None, 0
        if "mix" in d:
            m = d["mix"]
            if not isinstance(m, Mapping):
                raise RecipeError(f"{where}: [mix] must be a table.")
            try:
                mix = DegradationMix.from_dict(m, f"{where} [mix]")
            except DegradationParamError as e:
                raise RecipeError(f"{where} [mix]: {e}") from e
            seed = m.get("seed", 0)
        return Recipe(source, d.get("imgsz"), sel, d.get("repeat"), mix, seed, str(d.get("name", "")), base_dir)

    def to_toml(self) -> str:
        return toml_io.dumps(self.to_dict())

    @staticmethod
    def from_toml(text: str, base_dir: Path | None = None, where: str = "recipe") -> Recipe:
        return Recipe.from_dict(toml_io.loads(text, where), base_dir, where)

    @staticmethod
    def read(path: str | Path) -> Recipe:
        """A recipe file; a bare name like 'vtest-qrid' finds a bundled recipe in calib_sets/recipes/."""
        p = Path(path)
        if not p.is_file() and (RECIPES / f"{p.name}").is_file():
            p = RECIPES / p.name
        elif not p.is_file() and (RECIPES / f"{p.name}.toml").is_file():
            p = RECIPES / f"{p.name}.toml"
        if not p.is_file():
            have = sorted(f.name for f in RECIPES.glob("*.toml"))
            raise SourceNotFoundError(f"recipe {path} does not exist; give a path to a .toml recipe or one of the "
                                      f"bundled recipes {have}.")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError(f"recipe {p} cannot be read: {e}.") from e
        return Recipe.from_toml(text, p.parent, str(p))

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.to_toml(), encoding="utf-8")
        return p


def bundled_recipes() -> list[str]:
    return sorted(f.stem for f in RECIPES.glob("*.toml"))


_BUNDLED = re.compile(r"bundled:(\w+)(?:\[(\d*):(\d*)(?::(\d+))?\])?")


def load(spec: CalibSet | str | Path | Sequence[str | Path]) -> CalibSet:
    """A CalibSet from: a CalibSet (returned as is); a folder of images; an image file; a video file;
    a .toml recipe; 'bundled:NAME' or 'bundled:NAME[a:b]' / 'bundled:NAME[a:b:step]' (frame numbers
    a <= f < b, every step-th); 'imagefolder:DIR' (a classification set, DIR/<class>/<images>); or a list
    of any of these (concatenated in order)."""
    if isinstance(spec, CalibSet):
        return spec
    if isinstance(spec, list | tuple):
        if not spec:
            raise SourceNotFoundError("load([]): no calibration source given; pass a folder, a video, a .toml "
                                      "recipe or 'bundled:vtest'.")
        out = load(spec[0])
        for s in spec[1:]:
            out = out | load(s)
        return out
    s = str(spec)
    m = _BUNDLED.fullmatch(s)
    if m:
        frames = None
        if m.group(2) is not None:
            frames = range(int(m.group(2) or 0), int(m.group(3) or 10**9), int(m.group(4) or 1))
        return Source.bundled(m.group(1), frames)
    if s.startswith("imagefolder:"):
        return Source.image_folder(s[len("imagefolder:"):])
    if s.startswith("bundled:"):
        raise SourceNotFoundError(f"{s!r} is not a bundled spec; write 'bundled:vtest' or 'bundled:vtest[0:320]'.")
    p = Path(s)
    if p.suffix.lower() == ".toml":
        return Recipe.read(p).build()
    if p.suffix.lower() in VIDEO_EXTS and not p.is_dir():
        return Source.video(p)
    return Source.images(p)
