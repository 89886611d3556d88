"""Refuse an environment that holds CUDA packages on a machine without a GPU (run by `make venv`)."""

from __future__ import annotations

import sys
from importlib.metadata import distributions


def nvidia_packages() -> list[str]:
    names = {d.metadata["Name"] for d in distributions() if d.metadata["Name"]}
    return sorted(n for n in names if n.lower().startswith("nvidia-") or n.lower() == "triton")


def has_gpu() -> bool:
    import shutil

    return shutil.which("nvidia-smi") is not None


if __name__ == "__main__":
    found = nvidia_packages()
    if found and not has_gpu():
        sys.exit(f"CUDA packages installed on a machine without a GPU: {found}. "
                 "Install torch==2.13.0 (the CPU build) and medmnist with --no-deps.")
    print(f"environment ok: {len(found)} CUDA package(s), GPU present: {has_gpu()}")
