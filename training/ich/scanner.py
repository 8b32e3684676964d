"""The acquisition: head pose, the scanner's grid (field of view, slices, gantry tilt), slice-profile
averaging (partial volume), reconstruction kernel, beam hardening, streaks and noise.

**Output grid** (arrays ``(X, Y, Z)``, ``Z`` = slices, world RAS+ mm): voxel ``(i, j, k)`` is at
``o + i d ex + j d v + k dz ez`` with ``ex = (1, 0, 0)``, ``v = (0, cos t, sin t)`` (the in-plane
antero-posterior axis, tilted by the gantry tilt ``t`` about the left-right axis, anterior end up),
``ez = (0, 0, 1)`` (table axis) and ``dz = T / cos t``: slices of thickness ``T`` (perpendicular to
their plane, contiguous) stacked along the table, as a tilted-gantry DICOM series is. The affine is
therefore sheared when ``t > 0``: its third column is ``(0, 0, T / cos t)`` and its determinant is
``d^2 T``. Without tilt it is diagonal, ``diag(d, d, T)`` (RAS).

**Partial volume**: HU are computed on the label grid (1 mm for the shared maps) and each output voxel
is the mean of ``n = ceil(T / fine_mm)`` samples spread over its slice thickness along the slice
normal (a box slice profile), each sample trilinear in-plane; masks are the majority of the same
samples (nearest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.ich.anatomy import BRAINSTEM, Anatomy
from training.ich.tissues import CLASS_INDEX

CALC_CODE = 6  # annotation value of calcifications (1-5 are the bleed types)
BONE_CODE = 7  # annotation value of bone (not a label of the output; it vetoes bleed labels)


@dataclass
class Pose:
    """Head pose: a label-world point ``p`` lies at ``R (p - centre) + centre + t`` in the scanner."""
    rotation: np.ndarray
    translation: np.ndarray
    centre: np.ndarray

    def to_scanner(self, world) -> np.ndarray:
        world = np.atleast_2d(np.asarray(world, float))
        return (world - self.centre) @ self.rotation.T + self.centre + self.translation


@dataclass
class Grid:
    """The output grid: ``affine`` (4 x 4, maybe sheared), ``shape`` ``(X, Y, Z)``, slice thickness
    ``slice_mm`` (T), in-plane spacing ``inplane_mm``, gantry ``tilt_deg`` and samples per slice."""
    affine: np.ndarray
    shape: tuple[int, int, int]
    slice_mm: float
    inplane_mm: float
    tilt_deg: float
    samples: int

    @property
    def normal(self) -> np.ndarray:
        t = np.deg2rad(self.tilt_deg)
        return np.array([0.0, -np.sin(t), np.cos(t)])


def draw_pose(anat: Anatomy, draws, cfg: dict) -> Pose:
    """Random rotation (about x: pitch, y: roll, z: yaw; ``rotation_deg`` maxima) about the centre of
    the intracranial cavity and translation (``translation_mm`` maxima)."""
    angles = [draws.uniform(f"acquisition.rotation_{a}_deg", (-m, m)) for a, m in zip("xyz", cfg["rotation_deg"])]
    shift = [draws.uniform(f"acquisition.translation_{a}_mm", (-m, m)) for a, m in zip("xyz", cfg["translation_mm"])]
    ax, ay, az = np.deg2rad(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    mask = anat.icv if anat.icv.any() else anat.cls != CLASS_INDEX["air"]
    centre = anat.world(np.argwhere(mask).mean(axis=0))[0]
    return Pose(rz @ ry @ rx, np.asarray(shift, float), centre)


def plan_grid(anat: Anatomy, pose: Pose, draws, cfg: dict) -> Grid:
    """The field of view (square, ``fov_mm``, centred on the head with ``fov_offset_mm`` jitter), the
    in-plane spacing, slice thickness, gantry tilt and the slices from ``vertex_margin_mm`` above the
    vertex down ``coverage_mm`` (at most to the bottom of the label map)."""
    d = draws.uniform("acquisition.inplane_mm", cfg["inplane_mm"])
    thick = draws.uniform("acquisition.slice_mm", cfg["slice_mm"])
    tilted = draws.bernoulli("acquisition.tilted", cfg["tilt_probability"])
    tilt = draws.uniform("acquisition.tilt_deg", cfg["tilt_deg"]) if tilted else 0.0
    draws.record("acquisition.tilt_deg", tilt)
    fov = draws.uniform("acquisition.fov_mm", cfg["fov_mm"])
    off = [draws.uniform(f"acquisition.fov_offset_{a}_mm", (-cfg["fov_offset_mm"], cfg["fov_offset_mm"])) for a in "xy"]
    head = np.argwhere(anat.cls[::2, ::2, ::2] != CLASS_INDEX["air"]) * 2
    pts = pose.to_scanner(anat.world(head))
    margin = draws.uniform("acquisition.vertex_margin_mm", cfg["vertex_margin_mm"])
    coverage = draws.uniform("acquisition.coverage_mm", cfg["coverage_mm"])
    z_hi = pts[:, 2].max() + margin
    z_lo = max(z_hi - coverage, pts[:, 2].min())
    t = np.deg2rad(tilt)
    dz = thick / np.cos(t)
    n_slices = max(int(np.ceil((z_hi - z_lo) / dz)), 1)
    n_xy = max(int(round(fov / d)), 8)
    ex, v, ez = np.array([1.0, 0, 0]), np.array([0.0, np.cos(t), np.sin(t)]), np.array([0.0, 0, 1])
    centre = np.array([(pts[:, 0].min() + pts[:, 0].max()) / 2 + off[0], (pts[:, 1].min() + pts[:, 1].max()) / 2 + off[1],
                       z_lo])
    origin = centre - (n_xy - 1) / 2 * d * (ex + v)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = d * ex, d * v, dz * ez, origin
    samples = max(int(np.ceil(thick / cfg["fine_mm"] - 1e-6)), 1)
    draws.record("acquisition.shape", [n_xy, n_xy, n_slices])
    draws.record("acquisition.samples_per_slice", samples)
    return Grid(affine, (n_xy, n_xy, n_slices), thick, d, tilt, samples)


def resample(hu: np.ndarray, ann: np.ndarray, label_affine: np.ndarray, pose: Pose, grid: Grid,
             air_hu: float) -> tuple[np.ndarray, np.ndarray]:
    """The label-grid HU volume and annotation (0 none, 1-5 bleed types, 6 calcification, 7 bone) on the
    output grid: per slice, ``samples`` planes across the slice thickness, averaged (HU) or voted
    (annotation: a voxel is a bleed when at least half its samples are and none is bone --
    a thick slice through the skull's curve reads as bone, not blood --, of the type most of them are;
    a calcification when at least half are)."""
    inv = np.linalg.inv(label_affine)
    g = inv[:3, :3] @ pose.rotation.T
    n, thick = grid.samples, grid.slice_mm
    a = grid.affine
    step = thick / n
    matrix = g @ np.column_stack([a[:3, 0], a[:3, 1], step * grid.normal])
    image = np.empty(grid.shape, np.float32)
    labels = np.zeros(grid.shape, np.uint8)
    for k in range(grid.shape[2]):
        start = a[:3, 3] + k * a[:3, 2] - (n - 1) / 2 * step * grid.normal
        offset = g @ (start - pose.centre - pose.translation) + inv[:3, :3] @ pose.centre + inv[:3, 3]
        shape = (grid.shape[0], grid.shape[1], n)
        image[:, :, k] = ndimage.affine_transform(hu, matrix, offset, shape, order=1, mode="constant",
                                                  cval=air_hu).mean(axis=2)
        sub = ndimage.affine_transform(ann, matrix, offset, shape, order=0, mode="constant", cval=0)
        if not sub.any():
            continue
        counts = np.stack([(sub == c).sum(axis=2) for c in range(1, BONE_CODE + 1)], axis=0)
        bleed = counts[:5].sum(axis=0)
        out = np.where((2 * bleed >= n) & (counts[6] == 0), 1 + np.argmax(counts[:5], axis=0), 0)
        out = np.where((out == 0) & (2 * counts[5] >= n), CALC_CODE, out)
        labels[:, :, k] = out
    return image, labels


def apply_kernel(image: np.ndarray, grid: Grid, draws, cfg: dict) -> tuple[str, float]:
    """In-plane reconstruction kernel (in place): ``smooth`` a Gaussian of ``smooth_sigma_mm``;
    ``sharp`` an unsharp mask ``x + a (x - G x)`` (``sharp_sigma_mm``, ``sharp_amount``), edge
    enhancement with overshoot at bone. Returns the kind and the in-plane SD (mm) of its blur."""
    kind = draws.choice("acquisition.kernel", cfg["kernel_probabilities"])
    if kind == "smooth":
        sigma = draws.uniform("acquisition.kernel_sigma_mm", cfg["smooth_sigma_mm"])
        image[...] = ndimage.gaussian_filter(image, (sigma / grid.inplane_mm,) * 2 + (0,))
    else:
        sigma = draws.uniform("acquisition.kernel_sigma_mm", cfg["sharp_sigma_mm"])
        amount = draws.uniform("acquisition.sharp_amount", cfg["sharp_amount"])
        image += amount * (image - ndimage.gaussian_filter(image, (sigma / grid.inplane_mm,) * 2 + (0,)))
    return kind, sigma


def _voxel_world(grid: Grid, box) -> np.ndarray:
    """World positions ``(..., 3)`` of the output voxels of ``box`` (slices)."""
    ii, jj, kk = np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")
    a = grid.affine
    return (ii[..., None] * a[:3, 0] + jj[..., None] * a[:3, 1] + kk[..., None] * a[:3, 2] + a[:3, 3]).astype(np.float32)


def _index_box(grid: Grid, points, margin_mm: float) -> tuple[slice, ...]:
    """The output-grid box around world points, grown by ``margin_mm``."""
    inv = np.linalg.inv(grid.affine)
    idx = np.atleast_2d(points) @ inv[:3, :3].T + inv[:3, 3]
    m = margin_mm / np.array([grid.inplane_mm, grid.inplane_mm, grid.slice_mm])
    lo = np.clip(np.floor(idx.min(axis=0) - m), 0, grid.shape).astype(int)
    hi = np.clip(np.ceil(idx.max(axis=0) + m) + 1, 0, grid.shape).astype(int)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def petrous_band(image: np.ndarray, anat: Anatomy, pose: Pose, grid: Grid, draws, cfg: dict) -> None:
    """Beam-hardening dark band between the petrous bones (in place; probability
    ``petrous_probability``): ``-A`` HU (``petrous_hu``) along the segment joining the centroids of the
    left and right bone lateral to the brainstem (``petrous_search_mm``: 15-50 mm from the midline,
    within 25 mm antero-posteriorly and 15 mm vertically of the brainstem's centroid), Gaussian across it in-plane
    (``petrous_width_mm``) and through-plane (``petrous_halfheight_mm``), in non-bone, non-air voxels."""
    if not draws.bernoulli("acquisition.petrous", cfg["petrous_probability"]):
        return
    stem = np.argwhere(anat.labels == BRAINSTEM)
    bone = np.argwhere(anat.mask("bone", "cancellous_bone")[::2, ::2, ::2]) * 2
    if len(stem) == 0 or len(bone) == 0:
        draws.record("acquisition.petrous", False)
        return
    c = anat.world(stem.mean(axis=0))[0]
    w = anat.world(bone)
    lat = np.abs(anat.lateral(w[:, 0], w[:, 1], w[:, 2]))
    box = cfg["petrous_search_mm"]
    near = ((np.abs(w[:, 1] - c[1]) < box["anteroposterior"]) & (np.abs(w[:, 2] - c[2]) < box["vertical"])
            & (lat > box["lateral"][0]) & (lat < box["lateral"][1]))
    lat = anat.lateral(w[:, 0], w[:, 1], w[:, 2])
    if not (near & (lat > 0)).any() or not (near & (lat < 0)).any():
        draws.record("acquisition.petrous", False)
        return
    ends = pose.to_scanner([w[near & (lat < 0)].mean(axis=0), w[near & (lat > 0)].mean(axis=0)])
    amp = draws.uniform("acquisition.petrous_hu", cfg["petrous_hu"])
    width = draws.uniform("acquisition.petrous_width_mm", cfg["petrous_width_mm"])
    half = draws.uniform("acquisition.petrous_halfheight_mm", cfg["petrous_halfheight_mm"])
    draws.record("acquisition.petrous_ends_mm", ends.round(1))
    box = _index_box(grid, ends, 3 * max(width, half))
    if any(s.stop <= s.start for s in box):
        return
    p = _voxel_world(grid, box)
    seg = ends[1] - ends[0]
    s = np.clip(((p - ends[0]) @ seg) / (seg @ seg), 0, 1)
    r = p - (ends[0] + s[..., None] * seg)
    dn = r @ grid.normal
    dp2 = (r ** 2).sum(axis=-1) - dn ** 2
    weight = np.exp(-dp2 / (2 * width ** 2) - dn ** 2 / (2 * half ** 2))
    sub = image[box]
    soft = (sub > -200) & (sub < 300)
    sub[soft] -= amp * weight[soft]


def streaks(image: np.ndarray, anat: Anatomy, pose: Pose, grid: Grid, draws, cfg: dict) -> None:
    """Streak artefacts (in place): ``streak_count`` lines through random skull-base bone voxels (at most
    ``streak_source_max_height_mm`` above the brainstem's centroid) at
    random in-plane angles, ``streak_hu`` (negative: dark), Gaussian across (``streak_width_mm``) and
    through-plane (``streak_halfheight_mm``), decaying along the line over ``streak_length_mm``;
    applied inside the head (HU > -500)."""
    count = draws.integer("acquisition.streak_count", cfg["streak_count"])
    bone = np.argwhere(anat.mask("bone")[::2, ::2, ::2]) * 2
    if count == 0 or len(bone) == 0:
        return
    w = anat.world(bone)
    stem = np.argwhere(anat.labels == BRAINSTEM)
    if len(stem):
        base = w[w[:, 2] < anat.world(stem.mean(axis=0))[0][2] + cfg["streak_source_max_height_mm"]]
        w = base if len(base) else w
    for s in range(count):
        p = f"acquisition.streak_{s}_"
        src = pose.to_scanner(w[draws.integer(p + "source", (0, len(w) - 1))])[0]
        angle = draws.uniform(p + "angle_rad", (0.0, np.pi))
        amp = draws.uniform(p + "hu", cfg["streak_hu"])
        width = draws.uniform(p + "width_mm", cfg["streak_width_mm"])
        length = draws.uniform(p + "length_mm", cfg["streak_length_mm"])
        half = draws.uniform(p + "halfheight_mm", cfg["streak_halfheight_mm"])
        box = _index_box(grid, src, 3 * half)
        box = (slice(0, grid.shape[0]), slice(0, grid.shape[1]), box[2])
        if box[2].stop <= box[2].start:
            continue
        pos = _voxel_world(grid, box) - src
        t = np.deg2rad(grid.tilt_deg)
        direction = np.cos(angle) * np.array([1.0, 0, 0]) + np.sin(angle) * np.array([0.0, np.cos(t), np.sin(t)])
        dn = pos @ grid.normal
        along = pos @ direction
        across2 = (pos ** 2).sum(axis=-1) - dn ** 2 - along ** 2
        weight = np.exp(-np.maximum(across2, 0) / (2 * width ** 2) - dn ** 2 / (2 * half ** 2) - np.abs(along) / length)
        sub = image[box]
        inside = sub > -500
        sub[inside] += amp * weight[inside]


def add_noise(image: np.ndarray, grid: Grid, kernel: tuple[str, float], pf_centre, draws, cfg: dict) -> None:
    """Quantum noise (in place): Gaussian, correlated in-plane like the kernel (smooth: its blur; sharp:
    nearly white), SD log-uniform in ``noise_sd_hu``, raised by up to ``posterior_fossa_noise_gain`` in a Gaussian
    region (``posterior_fossa_radius_mm``) around the posterior fossa (``pf_centre``, scanner mm)."""
    sd = draws.loguniform("acquisition.noise_sd_hu", cfg["noise_sd_hu"])
    gain = draws.uniform("acquisition.posterior_fossa_noise_gain", cfg["posterior_fossa_noise_gain"])
    kind, sigma = kernel
    blur = (sigma if kind == "smooth" else 0.3 * sigma) / grid.inplane_mm
    noise = draws.rng.standard_normal(grid.shape, dtype=np.float32)
    if blur > 0.1:
        noise = ndimage.gaussian_filter(noise, (blur, blur, 0))
        noise /= max(float(noise.std()), 1e-6)
    noise *= sd
    if gain > 0 and pf_centre is not None:
        r = cfg["posterior_fossa_radius_mm"]
        box = _index_box(grid, pf_centre, 3 * r)
        if all(s.stop > s.start for s in box):
            d2 = ((_voxel_world(grid, box) - np.asarray(pf_centre, np.float32)) ** 2).sum(axis=-1)
            noise[box] *= 1.0 + gain * np.exp(-d2 / (2 * r ** 2))
    image += noise
