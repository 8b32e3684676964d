"""SynthSeg-style training canvases on real anatomy, in template space.

The synthetic canvases of :mod:`.sampler` are drawn from the template's own tissue maps: one anatomy,
which the network learns by heart. Here each canvas is rendered from the whole-head label map of a real
subject (``synthseg-label-maps``: 39 maps, FreeSurfer label values, 1 mm) carried to the template grid
(MNI152NLin2009aSym, 1 mm, RAS, ``197 x 233 x 189``, numpy order ``(X, Y, Z)``), with random contrast,
resolution, artefacts and real lesion shapes, and normalised exactly like the app's inputs. The result
is a *labelled* canvas ``{"image", "label", "ignore"}`` that :class:`.sampler.Sampler` consumes unchanged.

Per canvas (every number from the ``"synthesis"`` block of ``configs/synthesis.json``, the only place
the defaults live; each stage has its own random stream, so switching one stage off leaves the draws
of the others as they were):

1. **Anatomy.** The label map registered to the template like an app input (:func:`register_label_map`),
   then a small random affine and a smooth nonlinear deformation (:func:`random_coordinates`), applied
   by nearest neighbour to the labels *with the lesions coded into them*, so both move together.
2. **Lesions.** Real lesion shapes (:func:`draw_lesion_mask`: random masks, random subsets of their
   connected components, random left-right flip) kept inside the subject's own white matter
   (:data:`LESION_WM_LABELS`) before the deformation.
3. **Contrast** (:func:`tissue_lut`): a Gaussian mixture, ``voxel = N(mean_l, std_l)`` per label ``l``,
   with the class means drawn from the ranges of the canvas's contrast type (FLAIR, T2, PD, T1 or
   fully random). Lesion component ``k`` adds ``G_s * (delta_k 1_k)``, ``delta_k = sign * c * mean_WM``
   (or a faint ``sign * c' * sqrt(std_WM^2 + std_noise^2)``), ``G_s`` a Gaussian of ``s`` mm; the
   target is ``G_s * 1_lesion`` (soft partial-volume edges).
4. **Hard negatives** (:func:`hard_negatives`), drawn into the image only: periventricular rims and
   caps, CSF partial volume beside sulci and the septum pellucidum, punctate deep-WM dots, flow
   artefacts (ghosts and streaks of vessels and the sagittal sinus along the phase-encode axis).
5. **Acquisition** (:func:`acquire`): partial-volume blur, bias field, thick slices along a random
   axis (:func:`thick_slices`, :func:`upsample_slices`), k-space ghosting and motion
   (:func:`kspace_artefacts`), Rician or Gaussian noise on the acquired grid; the skull kept or
   stripped; then :func:`bids_app.imaging.brain.normalise_intensity` inside the template brain mask,
   as :func:`bids_app.imaging.template_space.to_template_space` does.

:func:`synthetic_canvases` renders (or reads from its cache) the canvases of a training run.
``python -m training.mslesion.synthesis CONFIG --figure PNG`` draws examples for the model card.

Modules, in the order of a canvas: :mod:`.config` (:func:`settings`), :mod:`.fields` (draws, boxes, smooth
random fields), :mod:`.anatomy` (tissue classes, label maps registered to the template, deformation),
:mod:`.lesions`, :mod:`.negatives` (hard negatives), :mod:`.acquisition`, :mod:`.render` (one canvas),
:mod:`.canvases` (the cached canvases of a training run) and :mod:`.examples` (figure and benchmark of the
command line, :mod:`.__main__`). Everything is re-exported here.
"""

from training.mslesion.synthesis import config
from training.mslesion.synthesis.acquisition import acquire, add_noise, kspace_artefacts, thick_slices, upsample_slices
from training.mslesion.synthesis.anatomy import (BRAIN_CLASSES, CORTEX, LATERAL_VENTRICLES, LESION_CODE,
                                                 LESION_WM_LABELS, MIDLINE_CSF, SULCAL_CSF, TISSUES, deform_labels,
                                                 label_map_paths, random_coordinates, register_label_map)
from training.mslesion.synthesis.canvases import synthetic_canvases
from training.mslesion.synthesis.config import DEFAULTS_FILE, settings
from training.mslesion.synthesis.examples import benchmark, figure
from training.mslesion.synthesis.fields import FWHM, smooth_field, upsample
from training.mslesion.synthesis.lesions import draw_lesion_mask
from training.mslesion.synthesis.negatives import (csf_partial_volume, flow_artefacts, hard_negatives, periventricular,
                                                   punctate)
from training.mslesion.synthesis.render import STAGES, describe, render_canvas, tissue_lut

#: Nested merge of a settings block over another (what :func:`settings` does), for callers building blocks.
_merge = config._merge

__all__ = [
    "BRAIN_CLASSES", "CORTEX", "DEFAULTS_FILE", "FWHM", "LATERAL_VENTRICLES", "LESION_CODE", "LESION_WM_LABELS",
    "MIDLINE_CSF", "STAGES", "SULCAL_CSF", "TISSUES", "acquire", "add_noise", "benchmark", "csf_partial_volume",
    "deform_labels", "describe", "draw_lesion_mask", "figure", "flow_artefacts", "hard_negatives", "kspace_artefacts",
    "label_map_paths", "periventricular", "punctate", "random_coordinates", "register_label_map", "render_canvas",
    "settings", "smooth_field", "synthetic_canvases", "thick_slices", "tissue_lut", "upsample", "upsample_slices",
]
