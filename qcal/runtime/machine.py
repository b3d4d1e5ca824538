"""What machine a result was measured on: CPU model and the SIMD flags that decide INT8 speed."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from functools import lru_cache

_FLAGS_OF_INTEREST = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
                      "amx_int8", "f16c", "asimd", "asimddp")


@dataclass(frozen=True)
class MachineInfo:
    cpu_model: str
    cores: int
    flags: tuple[str, ...]
    platform: str

    @property
    def has_vnni(self) -> bool:
        # VNNI (AVX-512 VNNI or AVX-VNNI) accumulates u8*s8 products without the 16-bit saturation of
        # vpmaddubsw; without it ORT needs 7-bit weights (reduce_range) to stay exact.
        return "avx512_vnni" in self.flags or "avx_vnni" in self.flags

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["has_vnni"] = self.has_vnni
        return d


@lru_cache(maxsize=1)
def machine_info() -> MachineInfo:
    model: str = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    kept = tuple(sorted(f for f in flags if f in _FLAGS_OF_INTEREST))
    return MachineInfo(cpu_model=model, cores=os.cpu_count() or 1, flags=kept,
                       platform=f"{platform.system()}-{platform.machine()}")
