"""MS lesion model: DeepLesionBrain-style hierarchical specialisation with a global-binary-mask prior.

Everything happens on the 1 mm grid of the MNI152NLin2009aSym template (RAS, 197 x 233 x 189),
arrays in numpy order ``(X, Y, Z)``. Inputs are the subject FLAIR after
:func:`bids_app.imaging.template_space.to_template_space` (``(x - median) / IQR`` inside the template brain)
and, when ``prior`` is on, a second channel: the template white-matter mask (WM probability >= 0.5),
the "global binary mask" that tells a compact, patch-based network where in the brain it is.

Recipe (``python -m training.mslesion CONFIG``; resumable, checkpoints in ``run_dir``):

1. **Training data, synthesised on the fly** (labels are scarce on purpose). Real lesion shapes from
   ``lesion-masks-mni`` (28 patients, resampled to the template through world coordinates, random
   left-right flip on the symmetric template, each lesion kept with a random probability so that
   both light and heavy loads occur, plus small ellipsoids of 3-60 mm^3 in white matter because
   the real masks are dominated by large confluent lesions) are pasted into

   * real FLAIR canvases (unlabelled clinical scans; voxels that are already hyperintense in white
     matter are left out of the loss, since they may be real, unlabelled lesions), and
   * synthetic FLAIRs built from the template tissue maps with random GM/WM/CSF contrasts.

   A lesion adds ``contrast * soft_mask`` with ``contrast ~ U(0.6, 4)`` IQRs (faint lesions too) and
   the mask softened by a 0.6 voxel Gaussian (partial volume).
2. **Image-quality augmentation** on every patch: Gaussian blur, thick-slice simulation (block
   averaging along a random axis, 2-6 mm), ghosting and motion in k-space, Rician-like noise,
   smooth multiplicative bias field and gamma contrast.
3. **Generic net**: one compact 3D UNet trained on patches anywhere in the brain.
4. **Specialised nets**: the brain bounding box is split into ``grid`` overlapping sub-volumes; one
   copy of the generic net per sub-volume, initialised from it and fine-tuned on patches centred in
   that sub-volume. At inference each net sees its whole sub-volume; the maps are fused by a
   weighted mean with a separable cosine taper so that seams do not show.
5. **Adaptation without labels** (``init_from``: an exported model folder): the generic net starts
   from that model's generic net instead of from scratch, and the specialists are grown from it
   again; with a site's unlabelled FLAIRs as ``real_canvases`` this adapts the model in minutes.

Modules, in the order of the recipe: :mod:`.template` (template arrays, lesion masks, sulci),
:mod:`.canvases` (real FLAIRs in template space), :mod:`.synthesis` (SynthSeg-style canvases on real
anatomies), :mod:`.sampler` (synthesis of training patches),
:mod:`.augment` (image-quality augmentation), :mod:`.channels` (input channel names), :mod:`.train`
(loss, resumable loops, the recipe), :mod:`.adapt` (``--adapt``), :mod:`.scoring` (evaluation cases,
native-grid scores), :mod:`.evaluate` (the networks on the real cases), :mod:`.baseline` (FLAIR threshold),
:mod:`.export` (``models/mslesion``) and :mod:`.card` (the model card); configs in ``configs/``
(``default.json``: the shipped model), committed measurements in ``results/``.
"""

from pathlib import Path

#: Where the evaluation rows and reports of finished runs are committed (run folders are not).
RESULTS = Path(__file__).resolve().parent / "results"
