"""Small plotting helpers shared by the chapters (image grids)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import to_uint8

__all__ = ["image_grid", "show_images"]


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in [-1, 1] into one uint8 array ``(rows*(H+pad)-pad, cols*(W+pad)-pad, C)``."""
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    x = to_uint8(images)
    n, h, w, c = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[r * (h + pad) : r * (h + pad) + h, k * (w + pad) : k * (w + pad) + w] = x[i]
    return grid


def show_images(images: torch.Tensor, ax=None, nrow: int | None = None, title: str | None = None):
    """Draw an image grid on ``ax`` (a new figure when None); greyscale for C=1. Returns the axes."""
    import matplotlib.pyplot as plt

    grid = image_grid(images, nrow=nrow)
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    if grid.shape[-1] == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(grid)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax
