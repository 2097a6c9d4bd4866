"""Does this machine's torch fit its GPU? torch, the CUDA it was built for, the NVIDIA driver and the GPUs, and one
line saying what to do when they do not fit together.

    python -m openpack_vlm.platform_check        # prints the facts; exit 1 with the problem in one line

Used by finetune.ipynb's first code cell, ``serve.py`` at start-up and ``openpack_vlm.model.train`` /
``model.loading`` when 4-bit or a CUDA device is asked for, so an old driver reads as "torch 2.14.1+cu130 is built
for CUDA 13.0, which needs NVIDIA driver >= 580; this machine has 535.104.05 ...", not as "4-bit needs CUDA".
The driver and GPUs come from ``nvidia-smi`` (on PATH; absent = no NVIDIA GPU), so nothing here initialises CUDA.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field

# Oldest Linux driver per CUDA major version (NVIDIA's CUDA compatibility table; minor-version compatibility lets any
# 12.x build run on a 12.0-era driver)
DRIVER_FLOOR = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
TORCH_FLOOR = (2, 6)  # transformers 5.24's own minimum (its dependency table: torch>=2.6)
TORCH_TESTED = ("2.14.1 (CPU, CI)", "2.11 (H100/H200, docs/gpu)")
CU12_INSTALL = ("pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu126  "
                "(CUDA 12.6, driver >= 525), or keep your platform's CUDA torch (>= 2.6)")


class PlatformError(RuntimeError):
    """torch and the GPU do not fit together (one-line message)."""


def _version(text: str | None) -> tuple[int, ...]:
    out = []
    for part in (text or "").split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


@dataclass
class Platform:
    torch: str | None  # torch.__version__, None when torch is not installed
    torch_cuda: str | None  # torch.version.cuda: the CUDA torch was built for; None = a CPU build
    driver: str | None  # NVIDIA driver version from nvidia-smi; None = no NVIDIA GPU / no nvidia-smi
    gpus: list[str] = field(default_factory=list)

    @classmethod
    def detect(cls) -> "Platform":
        try:
            import torch

            version, cuda = torch.__version__, torch.version.cuda
        except ImportError:
            version = cuda = None
        driver, gpus = None, []
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                res = subprocess.run([smi, "--query-gpu=driver_version,name", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=20)
                rows = [ln.split(",", 1) for ln in res.stdout.splitlines() if ln.strip()] if res.returncode == 0 else []
                if rows:
                    driver = rows[0][0].strip()
                    gpus = [r[1].strip() if len(r) > 1 else "?" for r in rows]
            except (OSError, subprocess.SubprocessError):
                pass
        return cls(version, cuda, driver, gpus)

    def summary(self) -> str:
        gpu = f"{len(self.gpus)} x {self.gpus[0]}" if self.gpus else "no NVIDIA GPU found (nvidia-smi)"
        return (f"torch {self.torch or 'not installed'} (built for {'CUDA ' + self.torch_cuda if self.torch_cuda else 'CPU only'}), "
                f"NVIDIA driver {self.driver or 'none'}, {gpu}")

    def problem(self) -> str | None:
        """Why torch cannot use this machine's GPU (or is too old for this repo); None when it fits."""
        if self.torch is None:
            return "torch is not installed: pip install -r requirements-torch.txt, or " + CU12_INSTALL
        if _version(self.torch)[:2] < TORCH_FLOOR:
            return (f"torch {self.torch} is older than {'.'.join(map(str, TORCH_FLOOR))} (transformers 5.24's minimum): "
                    "pip install -r requirements-torch.txt, or " + CU12_INSTALL)
        if self.driver is None:
            return None  # no NVIDIA GPU: a CPU run (callers that need CUDA say so themselves)
        if self.torch_cuda is None:
            return (f"torch {self.torch} is a CPU-only build but this machine has {self.gpus[0] if self.gpus else 'a GPU'}"
                    f" (driver {self.driver}): " + CU12_INSTALL)
        major = _version(self.torch_cuda)[0]
        floor = DRIVER_FLOOR.get(major)
        if floor and _version(self.driver)[:3] < _version(floor):
            return (f"torch {self.torch} is built for CUDA {self.torch_cuda}, which needs NVIDIA driver >= "
                    f"{floor}; this machine has {self.driver}"
                    f"{' (' + self.gpus[0] + ')' if self.gpus else ''}. Install a torch built for CUDA 12.x: "
                    + CU12_INSTALL)
        return None


def peak_memory() -> dict:
    """The process's peak memory so far: on CUDA torch's peak allocated (and reserved) accelerator bytes, else the
    peak resident set (model + data + Python; Linux ru_maxrss is KiB). {"kind", "bytes"[, "reserved_bytes"]}."""
    import resource

    import torch

    if torch.cuda.is_available():
        return {"kind": "cuda_max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated()),
                "reserved_bytes": int(torch.cuda.max_memory_reserved())}
    return {"kind": "cpu_peak_rss", "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}


def explain_no_cuda() -> str:
    """Why CUDA is unavailable, for errors raised where CUDA was asked for."""
    p = Platform.detect()
    return p.problem() or (f"no NVIDIA GPU visible ({p.summary()})" if p.driver is None else
                           f"CUDA is not available to torch ({p.summary()})")


def require_fit() -> Platform:
    """The platform, or PlatformError when torch cannot use the GPU this machine has."""
    p = Platform.detect()
    msg = p.problem()
    if msg:
        raise PlatformError(msg)
    return p


def main(argv=None) -> int:
    p = Platform.detect()
    print(p.summary())
    msg = p.problem()
    if msg:
        print(f"error: {msg}", file=sys.stderr)
        return 1
    print("ok: torch fits this machine" + (" (CPU run)" if p.driver is None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
