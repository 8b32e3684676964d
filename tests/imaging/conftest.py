"""Module-scoped phantom fixtures of the bids_app.imaging tests."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from bids_app.imaging import registration
from tests.imaging.phantoms import THREADS, _phantom, _rotation, _thick_slices


@pytest.fixture(scope="module")
def phantom():
    return _phantom()



@pytest.fixture(scope="module")
def rigid_case(phantom):
    """Phantom moved by a known rigid transform (~10 degrees, 6.2 mm) and seen on a 1 x 1 x 4 mm
    oblique grid (fixed, FLAIR-like); the 1 mm phantom is the moving (T1w-like) image."""
    img, labels = phantom
    true = sitk.Euler3DTransform()
    true.SetRotation(*np.deg2rad([8.0, -4.0, 5.0]))
    true.SetTranslation((5.0, -3.0, 2.0))
    direction = _rotation((1, 0, 0), 15) @ _rotation((0, 0, 1), 10)
    fixed = _thick_slices(img, true, (48, 48, 12), direction)
    est = registration.rigid_register(img, fixed, threads=THREADS)
    return img, labels, fixed, true, est


