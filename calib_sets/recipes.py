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
`repeat` is lazy (CalibSet.repeat): `repeat = 10**12` builds at once and costs no memory.

Safety, checked before anything is built: a recipe may use other recipes as sources, but not itself, directly or
through others (a cycle is a RecipeError naming the chain), at most MAX_DEPTH deep and MAX_RECIPES recipe files in
all. Every path written in a recipe (relative ones are relative to the recipe's file) must resolve, symlinks
followed, inside the recipe root: the folder holding the top-level recipe. `allow_outside_root=True` lifts that.
Specs given by the caller (load's argument, the command line) are not checked: only paths written in recipes.

`load(spec)` lives here too (calib_sets.spec re-exports it): a recipe's sources are specs and a spec may be a
recipe, so the two recurse into each other and stay in one module rather than two that import each other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from calib_sets import toml_io
from calib_sets.errors import DegradationParamError, RecipeError, SetTooLargeError, SourceNotFoundError
from calib_sets.mix import DegradationMix
from calib_sets.sample import EVERY_ITEM_LIMIT, CalibSet
from calib_sets.select import select
from calib_sets.sources import Source
from calib_sets.video import VIDEO_EXTS

RECIPES = Path(__file__).parent / "recipes"
STRATEGIES = ("random", "stratified", "diverse")
MAX_IMGSZ = 8192   # long side after resizing: 8K frames; beyond, one RGB image needs hundreds of MB


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
    path: Path | None = field(default=None, compare=False)      # the file it was read from, if any

    def __post_init__(self) -> None:
        if not self.source or not all(isinstance(s, str) and s for s in self.source):
            raise RecipeError(f"recipe {self.name!r}: source must be a non-empty string or list of strings.")
        for key in ("imgsz", "repeat", "seed"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "seed" else 1)):
                raise RecipeError(f"recipe {self.name!r}: {key}={v!r} must be a "
                                  f"{'non-negative' if key == 'seed' else 'positive'} integer.")
        if self.imgsz is not None and self.imgsz > MAX_IMGSZ:
            raise RecipeError(f"recipe {self.name!r}: imgsz={self.imgsz} is above {MAX_IMGSZ} px (one resized RGB "
                              f"frame would take {3 * self.imgsz**2 / 2**30:.0f} GiB); resize to the model's input "
                              "size, e.g. imgsz = 640.")

    def _resolve(self, spec: str) -> str:
        """A source as written -> the spec to load: relative paths (also an imagefolder: one) join base_dir."""
        if spec.startswith("bundled:") or self.base_dir is None:
            return spec
        prefix = "imagefolder:" if spec.startswith("imagefolder:") else ""
        rest = spec[len(prefix):]
        return spec if Path(rest).is_absolute() else prefix + str(self.base_dir / rest)

    def _sources(self, ctx: _Ctx) -> list[str]:
        """The resolved sources, each path checked against the recipe root."""
        out = []
        for written in self.source:
            spec = self._resolve(written)
            if ctx.root is not None and not ctx.allow_outside_root and not spec.startswith("bundled:"):
                target = Path(spec.removeprefix("imagefolder:")).resolve()
                if not target.is_relative_to(ctx.root):
                    raise RecipeError(
                        f"recipe {self.path or self.name or '(text)'}: source {written!r} resolves to {target}, "
                        f"outside the recipe root {ctx.root} (the folder holding the top-level recipe); a recipe "
                        f"reads only files under its root. Move the data under {ctx.root}, or, for a recipe you "
                        "trust, pass allow_outside_root=True (CLI: --allow-outside-recipe-root).")
            out.append(spec)
        return out

    def build(self, *, allow_outside_root: bool = False) -> CalibSet:
        """The CalibSet. Recipe cycles, nesting and paths outside the root are refused before anything is built
        (see the module doc); the root is base_dir (the recipe's folder), or, for a recipe not read from a file,
        the folder of each recipe file it uses."""
        ctx = _Ctx(self.base_dir.resolve() if self.base_dir is not None else None, allow_outside_root)
        _check_graph(self, ctx)
        return self._build(ctx)

    def _build(self, ctx: _Ctx) -> CalibSet:
        cs = _load([*self._sources(ctx)], allow_outside_root=ctx.allow_outside_root, ctx=ctx)
        if self.imgsz is not None:
            cs = cs.resized(self.imgsz)
        if self.select is not None:
            sel = self.select
            if sel.strategy == "diverse" and cs.lazy and len(cs) > EVERY_ITEM_LIMIT:
                raise SetTooLargeError(f"recipe {self.path or repr(self.name)}: [select] strategy='diverse' decodes "
                                       f"every sample, and the sources hold {len(cs)} (a nested repeat); at most "
                                       f"{EVERY_ITEM_LIMIT}. Lower that repeat or use strategy='random'.")
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
        p, _ = _locate(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError(f"recipe {p} cannot be read: {e}.") from e
        r = Recipe.from_toml(text, p.parent, str(p))
        return replace(r, path=p)

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.write_text(self.to_toml(), encoding="utf-8")
        return p


def bundled_recipes() -> list[str]:
    return sorted(f.stem for f in RECIPES.glob("*.toml"))


_BUNDLED = re.compile(r"bundled:(\w+)(?:\[(\d*):(\d*)(?::(\d+))?\])?")


def load(spec: CalibSet | str | Path | Sequence[str | Path], *, allow_outside_root: bool = False) -> CalibSet:
    """A CalibSet from: a CalibSet (returned as is); a folder of images; an image file; a video file;
    a .toml recipe; 'bundled:NAME' or 'bundled:NAME[a:b]' / 'bundled:NAME[a:b:step]' (frame numbers
    a <= f < b, every step-th); 'imagefolder:DIR' (a classification set, DIR/<class>/<images>); or a list
    of any of these (concatenated in order). The spec itself may point anywhere; paths written inside a recipe
    must stay under that recipe's folder unless allow_outside_root=True (see the module doc)."""
    return _load(spec, allow_outside_root=allow_outside_root, ctx=None)


def _load(spec: CalibSet | str | Path | Sequence[str | Path], *, allow_outside_root: bool,
          ctx: _Ctx | None) -> CalibSet:
    """load(); ctx is None for the caller's specs, the enclosing recipe's context for a recipe's sources."""
    if isinstance(spec, CalibSet):
        return spec
    if isinstance(spec, list | tuple):
        if not spec:
            raise SourceNotFoundError("load([]): no calibration source given; pass a folder, a video, a .toml "
                                      "recipe or 'bundled:vtest'.")
        out = _load(spec[0], allow_outside_root=allow_outside_root, ctx=ctx)
        for s in spec[1:]:
            out = out | _load(s, allow_outside_root=allow_outside_root, ctx=ctx)
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
        r = Recipe.read(p)
        if ctx is None:
            return r.build(allow_outside_root=allow_outside_root)
        return r._build(ctx.enter(p))
    if p.suffix.lower() in VIDEO_EXTS and not p.is_dir():
        return Source.video(p)
    return Source.images(p)


# --- recipe graph checks -------------------------------------------------------------------------------------
MAX_DEPTH = 16      # recipes within recipes
MAX_RECIPES = 256   # recipe files read for one build, counting every use of a recipe used twice


@dataclass(frozen=True)
class _Ctx:
    root: Path | None          # resolved folder of the top-level recipe; None: the next recipe file's folder
    allow_outside_root: bool

    def enter(self, written: str | Path) -> _Ctx:
        """The context of a recipe used as a source: the same root, except that a bundled recipe (found by
        name in calib_sets/recipes/) reads under that folder, and a root not set yet becomes the file's folder."""
        p, bundled = _locate(written)
        if bundled:
            return _Ctx(RECIPES.resolve(), self.allow_outside_root)
        return self if self.root is not None else _Ctx(p.parent.resolve(), self.allow_outside_root)


def _locate(path: str | Path) -> tuple[Path, bool]:
    """The recipe file `path` names and whether it is a bundled one found by name in calib_sets/recipes/."""
    p = Path(path)
    if p.is_file():
        return p, False
    for cand in (RECIPES / p.name, RECIPES / f"{p.name}.toml"):
        if cand.is_file():
            return cand, True
    have = sorted(f.name for f in RECIPES.glob("*.toml"))
    raise SourceNotFoundError(f"recipe {path} does not exist; give a path to a .toml recipe or one of the "
                              f"bundled recipes {have}.")


def _check_graph(top: Recipe, ctx: _Ctx) -> None:
    """Walk the recipes `top` uses (reading each file, building nothing): every source path under the root,
    no cycle, at most MAX_DEPTH deep and MAX_RECIPES uses in all."""
    root_for_names = ctx.root or (top.base_dir.resolve() if top.base_dir else Path.cwd().resolve())

    def name(f: Path) -> str:
        return str(f.relative_to(root_for_names)) if f.is_relative_to(root_for_names) else str(f)

    uses = 0
    sizes: dict[tuple[Path, Path | None], int] = {}  # (file, root) -> recipe uses below it, once checked

    def walk(r: Recipe, c: _Ctx, stack: tuple[Path, ...]) -> int:
        nonlocal uses
        below = 0
        for spec in r._sources(c):
            if spec.startswith(("bundled:", "imagefolder:")) or Path(spec).suffix.lower() != ".toml":
                continue
            f = _locate(spec)[0].resolve()
            sub_ctx = c.enter(spec)
            if f in stack:
                chain = " -> ".join(name(x) for x in (*stack[stack.index(f):], f))
                raise RecipeError(f"recipe cycle: {chain}; a recipe cannot use itself as a source, directly or "
                                  f"through other recipes. Remove the source {spec!r} from {name(stack[-1])}, or "
                                  "point it at a recipe that does not lead back.")
            if len(stack) >= MAX_DEPTH:
                raise RecipeError(f"recipes nest more than {MAX_DEPTH} deep: {' -> '.join(map(name, (*stack, f)))}; "
                                  "flatten the chain (list the sources in one recipe).")
            n = sizes.get((f, sub_ctx.root))
            if n is None:
                n = sizes[(f, sub_ctx.root)] = walk(Recipe.read(f), sub_ctx, (*stack, f))
            below += 1 + n
            uses += 1 + n
            if uses > MAX_RECIPES:
                raise RecipeError(f"recipe {name(stack[-1]) if stack else top.name!r} uses more than {MAX_RECIPES} "
                                  "recipes in all (counting each use of a recipe used twice); list the sources "
                                  "once, in fewer recipes.")
        return below

    start = (top.path.resolve(),) if top.path is not None else ()
    walk(top, ctx, start)
