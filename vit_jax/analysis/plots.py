"""The analyses as figures (matplotlib): each function returns the figure and, given `path` (a
local path, `gs://...` or `s3://...`), writes it there as a PNG."""

from __future__ import annotations

import io
import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from vit_jax import storage


def save(fig: Figure, path: str | os.PathLike) -> None:
    """Writes `fig` to `path` as a PNG, whole or not at all (`storage.write_atomic`)."""
    png = io.BytesIO()
    fig.savefig(png, format='png', dpi=100, bbox_inches='tight')
    storage.write_atomic(storage.path(path), png.getvalue())


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path:
        save(fig, path)
    return fig


def attention_distance(distances: np.ndarray, *, max_distance: float | None = None,
                       title: str = '', path: str | os.PathLike | None = None) -> Figure:
    """One dot per head: mean attention distance (pixels) against block depth.

    `distances`: `[layers, heads]`, from `mean_attention_distance`.
    """
    layers, heads = distances.shape
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for head in range(heads):
        ax.scatter(np.arange(1, layers + 1), distances[:, head], s=14, label=f'head {head + 1}')
    ax.set_xlabel('network depth (block)')
    ax.set_ylabel('mean attention distance (pixels)')
    ax.set_xticks(np.arange(1, layers + 1))
    ax.set_ylim(0, max_distance or float(distances.max()) * 1.1 + 1e-6)
    ax.set_title(title or 'Mean attention distance')
    if heads <= 16:
        ax.legend(fontsize=6, ncol=2, loc='lower right')
    return _save(fig, path)


def attention_overlay(image: np.ndarray, maps: dict[str, np.ndarray], *, title: str = '',
                      path: str | os.PathLike | None = None) -> Figure:
    """The image, then each attention map `[rows, cols]` (values in [0, 1]) upsampled and
    overlaid on it. `image`: `[height, width, 3]` (or `[height, width]`) with values in [0, 1]."""
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(2.4 * (1 + len(maps)), 2.6))
    axes = np.atleast_1d(axes)
    extent = (0, image.shape[1], image.shape[0], 0)
    axes[0].imshow(image, cmap='gray' if image.ndim == 2 else None, extent=extent)
    axes[0].set_title(title or 'input', fontsize=8)
    for ax, (name, m) in zip(axes[1:], maps.items(), strict=True):
        ax.imshow(image, cmap='gray' if image.ndim == 2 else None, extent=extent)
        ax.imshow(m, cmap='jet', alpha=0.5, extent=extent, interpolation='bilinear',
                  vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.axis('off')
    fig.tight_layout()
    return _save(fig, path)


def position_similarity(similarity: np.ndarray, *, title: str = '',
                        path: str | os.PathLike | None = None) -> Figure:
    """The grid of small maps: at (row i, column j), the cosine similarity of patch (i, j)'s
    position embedding with every patch's. `similarity`: `[rows, cols, rows, cols]`."""
    rows, cols = similarity.shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(0.5 * cols + 1, 0.5 * rows + 0.6),
                             squeeze=False)
    for i in range(rows):
        for j in range(cols):
            im = axes[i, j].imshow(similarity[i, j], cmap='viridis', vmin=-1, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(str(i + 1), fontsize=6, rotation=0, labelpad=6)
    for j in range(cols):
        axes[-1, j].set_xlabel(str(j + 1), fontsize=6)
    fig.supxlabel('input patch column', fontsize=8)
    fig.supylabel('input patch row', fontsize=8)
    fig.suptitle(title or 'Position embedding similarity', fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.6, label='cosine similarity')
    return _save(fig, path)


def filters(components: np.ndarray, explained: np.ndarray | None = None, *, title: str = '',
            path: str | os.PathLike | None = None) -> Figure:
    """Each component `[k, k, channels]` drawn as an image (scaled to its own range)."""
    n = len(components)
    cols = min(n, 7)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.2 * rows + 0.4), squeeze=False)
    for idx, ax in enumerate(axes.ravel()):
        ax.axis('off')
        if idx >= n:
            continue
        c = components[idx]
        c = (c - c.min()) / max(float(c.max() - c.min()), 1e-12)
        ax.imshow(c[..., 0] if c.shape[-1] == 1 else c, cmap='gray', interpolation='nearest')
        if explained is not None:
            ax.set_title(f'{100 * explained[idx]:.1f}%', fontsize=6)
    fig.suptitle(title or 'Patch embedding filters: principal components', fontsize=9)
    return _save(fig, path)


def close(fig: Figure) -> None:
    """Frees a figure (the command line writes many)."""
    plt.close(fig)
