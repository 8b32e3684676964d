"""Infratentorial lesions: the brainstem and cerebellum in the search region and in the training patches."""

import numpy as np

from bids_app.mslesion import predict as M
from bids_app.mslesion import regions
from training.mslesion.crossval import config_region
from training.mslesion.sampler import Sampler
from tests.mslesion.test_measures import synthetic_brain
from tests.mslesion.test_uncertainty import tiny_lesion_model


def test_the_infratentorial_mask_is_the_region_that_the_lesion_report_counts():
    brain, wm, gm, affine = synthetic_brain()
    infra = regions.infratentorial_mask(brain, affine)
    assert np.array_equal(infra, regions.template_regions(wm, gm, brain, affine)[regions.INFRATENTORIAL])
    at = lambda x, y, z: tuple(int(round((v - affine[a, 3]) / 2.0)) for a, v in enumerate((x, y, z)))  # noqa: E731
    assert infra[at(0, -60, -40)] and infra[at(0, -30, -40)]  # cerebellum, brainstem (midline)
    assert not infra[at(45, 0, -30)] and not infra[at(0, -20, 20)]  # temporal pole, cerebrum


def test_the_search_region_takes_the_infratentorial_brain_where_template_wm_is_low():
    wm = np.zeros((30, 30, 30), np.float32)
    wm[5:15, 5:25, 10:25] = 0.9
    infra = np.zeros(wm.shape, bool)
    infra[20:28, 10:20, 2:10] = True  # "cerebellum": no template WM there
    plain = M.search_region(wm, 0.5, 3.0)
    both = M.search_region(wm, 0.5, 3.0, infra)
    assert not plain[24, 15, 5] and both[24, 15, 5]
    assert np.array_equal(both, plain | infra)


def test_the_model_metadata_switches_the_infratentorial_region_on():
    # The tiny grid lies, on the template's own affine, far below and behind the tentorium: all of
    # its brain is infratentorial, so with the flag the map is no longer cut to the dilated WM.
    metadata, generic, nets, boxes, brain, wm = tiny_lesion_model()
    image = np.random.default_rng(3).standard_normal(brain.shape).astype(np.float32)
    off = M.lesion_probability((metadata, generic, nets, boxes), image, wm, brain)
    on_meta = {**metadata, "output": {"search_region": {**metadata["output"]["search_region"], "infratentorial": True}}}
    on = M.lesion_probability((on_meta, generic, nets, boxes), image, wm, brain)
    region = M.search_region(wm, 0.5, 2.0)
    assert (off[~region] == 0).all() and (on[brain & ~region] > 0).all()
    np.testing.assert_array_equal(on[region], off[region])


def test_the_crossval_region_follows_the_config():
    wm = np.zeros((20, 20, 20), np.float32)
    wm[5:10, 5:10, 5:10] = 1
    infra = np.zeros(wm.shape, bool)
    infra[15:19, 15:19, 15:19] = True
    tpl = {"wm": wm, "infratentorial": infra}
    assert not config_region({"search_dilation_mm": 1.0}, tpl)[16, 16, 16]
    assert config_region({"search_dilation_mm": 1.0, "search_infratentorial": True}, tpl)[16, 16, 16]


def _template(n=40):
    g = np.indices((n, n, n)).astype(np.float32) - (n - 1) / 2
    r = np.sqrt((g ** 2).sum(0))
    brain = r <= 17
    wm = (brain & (r <= 12) & (g[2] > -4)).astype(np.float32)  # no white matter low in the "brain"
    gm = (brain & ~(wm > 0)).astype(np.float32)
    infra = brain & (g[2] <= -6)
    return {"brain": brain, "wm": wm, "gm": gm, "prior": (wm >= 0.5).astype(np.float32), "infratentorial": infra}


def test_infratentorial_patches_get_lesions_below_the_tentorium_where_lesion_wm_would_forbid_them():
    tpl = _template()
    lesion = np.zeros(tpl["brain"].shape, bool)
    lesion[18:22, 18:22, 24:28] = True  # the only pasted mask: supratentorial, in white matter
    on = Sampler(tpl, [lesion], [], patch=16, real_fraction=0.0, seed=0, lesion_wm=0.3, infratentorial=1.0)
    low = 0
    for _ in range(30):
        (img, prior), target, weight = on.sample()
        if target.sum() and (prior[target > 0] == 0).mean() > 0.9:
            low += 1  # lesions outside the WM prior: only the infratentorial ones can be there
    assert low >= 5
    off = Sampler(tpl, [lesion], [], patch=16, real_fraction=0.0, seed=0, lesion_wm=0.3)
    for _ in range(30):
        (img, prior), target, weight = off.sample()
        assert (prior[target > 0] > 0).all()  # lesion_wm keeps every pasted lesion in WM
    # Off draws no extra random numbers: a config without the key samples exactly as before.
    a = Sampler(tpl, [lesion], [], patch=16, real_fraction=0.0, seed=4, lesion_wm=0.3)
    b = Sampler(tpl, [lesion], [], patch=16, real_fraction=0.0, seed=4, lesion_wm=0.3, infratentorial=0.0)
    for _ in range(5):
        for x, y in zip(a.sample(), b.sample()):
            np.testing.assert_array_equal(x, y)
