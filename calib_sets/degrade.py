"""Degradations in explicit units, each one small pure function of (RGB uint8 image, parameters[, rng]).

Units (we define them here rather than borrow an augmentation library's, whose meanings drift by version):
  gaussian_noise  sigma    standard deviation of additive noise, 0-255 pixel units, per pixel and channel
  gaussian_blur   sigma    Gaussian standard deviation in pixels (kernel 2*ceil(3 sigma)+1, reflect border)
  motion_blur     length   length of the linear motion path in pixels; angle in degrees, 0 = horizontal,
                           counter-clockwise positive
  low_contrast    factor   out = m + factor * (in - m), m = the image's mean intensity (std scales by factor)
  low_light       brightness, gamma: out = 255 * brightness * (in / 255) ** gamma
  jpeg            quality  libjpeg quality 1..100 (4:2:0 chroma subsampling, OpenCV's encoder)

A `Step` is one validated call; a `Condition` is a named sequence of steps (e.g. "mixed" = blur, then noise,
then JPEG: optics, sensor, codec, the order a camera applies them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from calib_sets.errors import DegradationParamError

Value = float | int


def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, sigma^2) noise (sigma in 0-255 units) to every pixel and channel, round and clip."""
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(img.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` pixels."""
    k = 2 * math.ceil(3 * sigma) + 1  # +-3 sigma holds 99.7% of the kernel's mass
    return cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def motion_kernel(length: int, angle: float) -> np.ndarray:
    """A normalised line kernel: `length` taps one pixel apart along the direction `angle` (degrees), each
    splatted bilinearly so that oblique lines stay anti-aliased. At angle 0 it is the classic 1 x length box."""
    size = 2 * math.ceil((length - 1) / 2 + 1) + 1  # room for the splat on both sides
    c = size // 2
    t = np.arange(length) - (length - 1) / 2
    a = math.radians(angle)
    x, y = c + t * math.cos(a), c - t * math.sin(a)  # image rows grow downwards: counter-clockwise = -y
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    k = np.zeros((size, size), np.float64)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (np.clip(y0 + dy, 0, size - 1), np.clip(x0 + dx, 0, size - 1)), w)
    return (k / k.sum()).astype(np.float32)


def motion_blur(img: np.ndarray, length: int, angle: float = 0.0) -> np.ndarray:
    """Linear motion blur over `length` pixels at `angle` degrees (camera shake or a moving object)."""
    if length <= 1:
        return img.copy()
    return cv2.filter2D(img, -1, motion_kernel(length, angle), borderType=cv2.BORDER_REFLECT_101)


def low_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Pull every pixel towards the image mean: the standard deviation scales by `factor` (before rounding)."""
    m = np.float32(img.mean())
    return np.clip(m + np.float32(factor) * (img.astype(np.float32) - m) + 0.5, 0, 255).astype(np.uint8)


def low_light(img: np.ndarray, brightness: float, gamma: float = 1.0) -> np.ndarray:
    """Under-exposure: out = 255 * brightness * (in/255)**gamma, through a 256-entry lookup table."""
    lut = 255.0 * brightness * (np.arange(256) / 255.0) ** gamma
    return cv2.LUT(img, np.clip(lut + 0.5, 0, 255).astype(np.uint8))


def jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DegradationParamError(f"jpeg: OpenCV could not encode a {img.shape} image at quality {quality}.")
    return buf.tobytes()


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at `quality` (1..100) and decode again: blocking and ringing of a heavy codec."""
    out = cv2.imdecode(np.frombuffer(jpeg_bytes(img, quality), np.uint8), cv2.IMREAD_COLOR)
    if out is None:  # cannot happen for bytes we just encoded; checked for the type checker and for safety
        raise DegradationParamError(f"jpeg: OpenCV could not decode its own quality-{quality} JPEG.")
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: type            # int or float
    lo: float
    hi: float
    unit: str
    lo_open: bool = False  # lo itself not allowed
    default: Value | None = None


@dataclass(frozen=True)
class Kind:
    fn: Callable[..., np.ndarray]
    params: tuple[ParamSpec, ...]
    random: bool = False  # takes an rng (its output depends on the sample's seed)


KINDS: dict[str, Kind] = {
    "gaussian_noise": Kind(gaussian_noise, (ParamSpec("sigma", float, 0, 255, "0-255 pixel units"),), True),
    "gaussian_blur": Kind(gaussian_blur, (ParamSpec("sigma", float, 0, 50, "pixels", lo_open=True),)),
    "motion_blur": Kind(motion_blur, (ParamSpec("length", int, 1, 201, "pixels"),
                                      ParamSpec("angle", float, -360, 360, "degrees", default=0.0))),
    "low_contrast": Kind(low_contrast, (ParamSpec("factor", float, 0, 1, "x std", lo_open=True),)),
    "low_light": Kind(low_light, (ParamSpec("brightness", float, 0, 1, "x intensity", lo_open=True),
                                  ParamSpec("gamma", float, 1, 5, "exponent", default=1.0))),
    "jpeg": Kind(jpeg, (ParamSpec("quality", int, 1, 100, "libjpeg quality"),)),
}


def validate(kind: str, params: Mapping[str, Any]) -> dict[str, Value]:
    """Check names, types and ranges; return the parameters with defaults filled in and types normalised."""
    if kind not in KINDS:
        raise DegradationParamError(f"unknown degradation {kind!r}; known: {sorted(KINDS)}.")
    specs = {p.name: p for p in KINDS[kind].params}
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise DegradationParamError(f"{kind}: unknown parameter(s) {unknown}; allowed: {sorted(specs)}.")
    out: dict[str, Value] = {}
    for name, spec in specs.items():
        if name not in params:
            if spec.default is None:
                raise DegradationParamError(f"{kind}: missing parameter {name!r} ({spec.unit}).")
            out[name] = spec.default
            continue
        v = params[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or (spec.kind is int and not float(v).is_integer()):
            raise DegradationParamError(f"{kind}: {name}={v!r} must be {'an integer' if spec.kind is int else 'a number'}"
                                        f" ({spec.unit}).")
        v = int(v) if spec.kind is int else float(v)
        if not (spec.lo < v if spec.lo_open else spec.lo <= v) or v > spec.hi or math.isnan(v):
            lo = "(" if spec.lo_open else "["
            raise DegradationParamError(f"{kind}: {name}={v} is out of range {lo}{spec.lo}, {spec.hi}] "
                                        f"({name} is in {spec.unit}).")
        out[name] = v
    return out


@dataclass(frozen=True)
class Step:
    """One degradation call with validated parameters (sorted (name, value) pairs, hashable)."""

    kind: str
    params: tuple[tuple[str, Value], ...]

    @staticmethod
    def of(kind: str, **params: Any) -> Step:
        return Step(kind, tuple(sorted(validate(kind, params).items())))

    def __post_init__(self) -> None:
        validate(self.kind, dict(self.params))

    @property
    def random(self) -> bool:
        return KINDS[self.kind].random

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        kw: dict[str, Any] = dict(self.params)
        if self.random:
            if rng is None:
                raise DegradationParamError(f"{self.kind} is random: give an rng (np.random.default_rng(seed)).")
            kw["rng"] = rng
        return KINDS[self.kind].fn(img, **kw)


@dataclass(frozen=True)
class Condition:
    """A named degradation: one or more steps applied in order."""

    name: str
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        if not self.name or self.name == "clean" or not self.name.replace("_", "").replace("-", "").isalnum():
            raise DegradationParamError(f"condition name {self.name!r} must be a non-empty identifier other "
                                        "than 'clean' (letters, digits, '_' or '-').")
        if not self.steps:
            raise DegradationParamError(f"condition {self.name!r} has no steps.")

    @property
    def random(self) -> bool:
        return any(s.random for s in self.steps)

    def params(self) -> dict[str, Value]:
        """Flat parameters for Sample.params: 'sigma' for one step, 'gaussian_blur.sigma' for several."""
        if len(self.steps) == 1:
            return dict(self.steps[0].params)
        return {f"{s.kind}.{k}": v for s in self.steps for k, v in s.params}

    def __call__(self, img: np.ndarray, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)  # one stream shared by the steps, in order: deterministic
        for s in self.steps:
            img = s(img, rng)
        return img

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [{"kind": s.kind, **dict(s.params)} for s in self.steps]}

    @staticmethod
    def from_dict(name: str, d: Mapping[str, Any]) -> Condition:
        steps = d.get("steps") if isinstance(d, Mapping) else None
        if not isinstance(steps, list) or set(d) - {"steps"}:
            raise DegradationParamError(f"condition {name!r} must be {{steps = [{{kind = ..., <params>}}, ...]}}; "
                                        f"got {dict(d) if isinstance(d, Mapping) else d!r}.")
        out = []
        for s in steps:
            if not isinstance(s, Mapping) or "kind" not in s:
                raise DegradationParamError(f"condition {name!r}: each step needs a 'kind' (one of {sorted(KINDS)}).")
            out.append(Step.of(str(s["kind"]), **{k: v for k, v in s.items() if k != "kind"}))
        return Condition(name, tuple(out))
