"""QC figures: slices of an image with a mask's contour, a probability map and numbered labels (matplotlib).

Conventions
-----------
Arrays are in the closest-canonical RAS+ orientation, shape ``(X, Y, Z)`` (load with
``nibabel.as_closest_canonical``), voxel sizes ``zooms`` in mm. Axial slices are ``[:, :, k]`` shown with
the patient's right on the viewer's left (radiological convention, as SCT's and most clinical
viewers), anterior up; sagittal slices are ``[i, :, :]`` with anterior to the right and superior up.
Pixels keep their physical aspect ratio. The image's grey levels are windowed to its 1st-99.5th
percentiles inside the displayed field of view, so a few bright voxels do not wash it out.

Every function returns PNG bytes (written by the caller through :mod:`bids_app.outputs`); nothing here
touches Nipype or torch.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

#: Mask contour, probability overlay and label colours (colour-blind-safe: yellow/magenta on grey).
CONTOUR_COLOUR = "#ffd000"
LABEL_COLOUR = "#ff3df5"
PROB_CMAP = "magma"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1.0, 99.5])
    return float(low), float(high if high > low else low + 1.0)


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="black")
    plt.close(fig)
    return buffer.getvalue()


def pick_slices(mask: np.ndarray, n: int, axis: int = 2, by_content: bool = False) -> list[int]:
    """``n`` slice indices along ``axis`` through the structure of ``mask`` ``(X, Y, Z)``.

    Evenly spaced between the first and last slice that hold mask voxels (``by_content=False``), or the
    ``n`` slices with the most mask voxels, in order (``by_content=True``; for scattered lesions). With an
    empty mask, evenly spaced across the middle 80 % of the volume.
    """
    counts = np.moveaxis(np.asarray(mask) > 0, axis, 0).reshape(mask.shape[axis], -1).sum(axis=1)
    size = mask.shape[axis]
    if not counts.any():
        return sorted({int(round(v)) for v in np.linspace(0.1 * (size - 1), 0.9 * (size - 1), n)})
    if by_content:
        return sorted(int(k) for k in np.argsort(-counts, kind="stable")[:n] if counts[k] > 0)
    present = np.flatnonzero(counts)
    return sorted({int(round(v)) for v in np.linspace(present[0], present[-1], n)})


def crop_box(mask: np.ndarray, zooms: Sequence[float], margin_mm: float, axes: tuple[int, int] = (0, 1)) -> tuple[slice, slice]:
    """In-plane ``(slice, slice)`` of ``axes`` around the mask's voxels, ``margin_mm`` on each side
    (the whole plane when the mask is empty)."""
    boxes = []
    nonzero = np.argwhere(np.asarray(mask) > 0)
    for axis in axes:
        size = mask.shape[axis]
        if nonzero.size == 0:
            boxes.append(slice(0, size))
            continue
        pad = int(np.ceil(margin_mm / float(zooms[axis])))
        boxes.append(slice(max(0, int(nonzero[:, axis].min()) - pad), min(size, int(nonzero[:, axis].max()) + pad + 1)))
    return boxes[0], boxes[1]


def _panel(ax, image2d: np.ndarray, spacing: tuple[float, float], window: tuple[float, float], *,
           mask2d: np.ndarray | None, prob2d: np.ndarray | None, radiological: bool) -> None:
    """Draw one slice: ``image2d`` indexed ``[u, v]`` (u to the viewer's right unless ``radiological``
    flips it, v up), its mask contour and probability overlay."""
    extent = (0, image2d.shape[0] * spacing[0], 0, image2d.shape[1] * spacing[1])
    ax.imshow(image2d.T, cmap="gray", origin="lower", extent=extent, vmin=window[0], vmax=window[1],
              interpolation="nearest")
    if prob2d is not None and np.any(prob2d > 0.05):
        shown = np.ma.masked_less(prob2d.T, 0.05)
        ax.imshow(shown, cmap=PROB_CMAP, origin="lower", extent=extent, vmin=0, vmax=1, alpha=0.45,
                  interpolation="nearest")
    if mask2d is not None and min(mask2d.shape) >= 2 and np.any(mask2d) and not np.all(mask2d):  # contour needs 2x2
        u = (np.arange(image2d.shape[0]) + 0.5) * spacing[0]
        v = (np.arange(image2d.shape[1]) + 0.5) * spacing[1]
        ax.contour(u, v, mask2d.T.astype(float), levels=[0.5], colors=CONTOUR_COLOUR, linewidths=0.9)
    if radiological:
        ax.invert_xaxis()
    ax.set_axis_off()


def axial_mosaic(image: np.ndarray, zooms: Sequence[float], slices: Sequence[int], *, mask: np.ndarray | None = None,
                 prob: np.ndarray | None = None, labels: np.ndarray | None = None,
                 box: tuple[slice, slice] | None = None, columns: int = 6, panel_in: float = 1.6,
                 title: str = "") -> bytes:
    """Axial slices ``[:, :, k]`` for ``k`` in ``slices`` (radiological: R on the left), each with the
    contour of ``mask``, ``prob`` (0..1) in colour, and the number of every label of ``labels`` (a label
    image, 0 = background) written at its centre on the slice where it is largest among those shown.
    ``box``: in-plane crop ``(x slice, y slice)``."""
    plt = _pyplot()
    box = box or (slice(0, image.shape[0]), slice(0, image.shape[1]))
    crop = (box[0], box[1])
    sub = image[crop]
    window = _window(sub[:, :, list(slices)] if len(slices) else sub)
    rows = max(1, int(np.ceil(len(slices) / columns)))
    cols = max(1, min(columns, len(slices)))
    aspect = (sub.shape[1] * zooms[1]) / max(sub.shape[0] * zooms[0], 1e-6)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel_in, rows * panel_in * aspect + (0.3 if title else 0)),
                             dpi=100, squeeze=False)
    fig.patch.set_facecolor("black")
    where = _label_slices(labels[crop], slices) if labels is not None else {}
    for index, ax in enumerate(axes.ravel()):
        if index >= len(slices):
            ax.set_axis_off()
            continue
        k = slices[index]
        _panel(ax, sub[:, :, k], (zooms[0], zooms[1]), window,
               mask2d=None if mask is None else mask[crop][:, :, k] > 0,
               prob2d=None if prob is None else prob[crop][:, :, k], radiological=True)
        for label, (slice_k, (cu, cv), radius) in where.items():
            if slice_k == k:  # beside the outline (up and to the viewer's right), not on it
                ax.text((cu + 0.5 - radius - 2) * zooms[0], (cv + 0.5 + radius + 2) * zooms[1], str(label),
                        color=LABEL_COLOUR, fontsize=7, fontweight="bold", ha="center", va="center")
        ax.text(0.02, 0.98, f"z={k}", color="white", fontsize=6, transform=ax.transAxes, va="top")
        if index == 0:
            ax.text(0.02, 0.02, "R", color="white", fontsize=7, transform=ax.transAxes)
            ax.text(0.98, 0.02, "L", color="white", fontsize=7, transform=ax.transAxes, ha="right")
    if title:
        fig.suptitle(title, color="white", fontsize=8)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.94 if title else 1, wspace=0.02, hspace=0.02)
    return _png(fig)


def _label_slices(labels: np.ndarray, slices: Sequence[int]) -> dict[int, tuple[int, tuple[float, float], float]]:
    """``{label: (k, (u, v), r)}``: for each label present on the shown slices, the shown slice where it
    has the most voxels, its in-plane centre of mass there and the radius of a disc of its area there
    (voxel units of the crop)."""
    where: dict[int, tuple[int, tuple[float, float], int]] = {}
    for k in slices:
        plane = labels[:, :, k]
        for label in np.unique(plane[plane > 0]):
            uv = np.argwhere(plane == label)
            if label not in where or len(uv) > where[label][2]:
                where[int(label)] = (int(k), (float(uv[:, 0].mean()), float(uv[:, 1].mean())), len(uv))
    return {label: (k, centre, float(np.sqrt(n / np.pi))) for label, (k, centre, n) in where.items()}


def sagittal_view(image: np.ndarray, zooms: Sequence[float], i: int, *, mask: np.ndarray | None = None,
                  prob: np.ndarray | None = None, box: tuple[slice, slice] | None = None, height_in: float = 4.0,
                  title: str = "") -> bytes:
    """The sagittal slice ``[i, :, :]`` (anterior to the right, superior up), with the contour of the
    mask's voxels within ±2 slices (a curved cord leaves a single sagittal plane) and ``prob``."""
    plt = _pyplot()
    box = box or (slice(0, image.shape[1]), slice(0, image.shape[2]))
    near = slice(max(0, i - 2), i + 3)
    image2d = image[i][box]
    mask2d = None if mask is None else np.any(mask[near] > 0, axis=0)[box]
    prob2d = None if prob is None else prob[i][box]
    width = height_in * (image2d.shape[0] * zooms[1]) / max(image2d.shape[1] * zooms[2], 1e-6)
    fig, ax = plt.subplots(figsize=(max(1.2, width), height_in + (0.3 if title else 0)), dpi=100)
    fig.patch.set_facecolor("black")
    _panel(ax, image2d, (zooms[1], zooms[2]), _window(image2d), mask2d=mask2d, prob2d=prob2d, radiological=False)
    if title:
        fig.suptitle(title, color="white", fontsize=8)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=0.93 if title else 1)
    return _png(fig)


def thumbnail(image: np.ndarray, zooms: Sequence[float], k: int, *, mask: np.ndarray | None = None,
              box: tuple[slice, slice] | None = None, size_in: float = 1.4) -> bytes:
    """One small axial slice with the mask contour (for the group page's table)."""
    plt = _pyplot()
    box = box or (slice(0, image.shape[0]), slice(0, image.shape[1]))
    image2d = image[box][:, :, k]
    fig, ax = plt.subplots(figsize=(size_in, size_in), dpi=80)
    fig.patch.set_facecolor("black")
    _panel(ax, image2d, (zooms[0], zooms[1]), _window(image2d),
           mask2d=None if mask is None else mask[box][:, :, k] > 0, prob2d=None, radiological=True)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1)
    return _png(fig)
