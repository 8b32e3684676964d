"""Intracranial haemorrhage (``ich``) in head CT: training code. Status: the synthetic head-CT generator
only (issue 15, item 1); no model yet (the network, its training and the app's task are pending).

No openly licensed head CT with haemorrhage masks is available, so training data are synthesised from
the 39 whole-head SynthSeg label maps of ``../shared/data/synthseg-label-maps``: Hounsfield units per
tissue from published ranges, bleeds of five types placed from the anatomy, mass effect, and the
acquisition (pose, field of view, slice thickness, gantry tilt, kernel, noise, beam hardening, streaks).

Modules: :mod:`.config` (every range and probability; ``configs/synth.json``), :mod:`.tissues` (label
classes, the HU table with sources), :mod:`.anatomy` (intracranial cavity, midline, calcifications),
:mod:`.bleeds` (IPH, SDH, EDH, SAH, IVH), :mod:`.mass` (mass effect, midline shift), :mod:`.scanner`
(acquisition), :mod:`.synth` (``synthesise_ct`` and the dataset command line) and :mod:`.figure`
(example figure); committed example figures in ``results/``.
"""
