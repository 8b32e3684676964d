"""Contrast-agnostic soft spinal-cord model: pools, synthesis, augmentation, training, export,
calibration, evaluation and model card (``python -m training.spinalcord CONFIG``).

Recipe (after Bédard et al., "Towards contrast-agnostic soft segmentation of the spinal cord"):

* **Soft ground truth.** Binary cord masks are resampled to the network's 0.5 mm in-plane grid by
  bilinear interpolation, which turns the mask edge into partial-volume fractions; in synthetic slices
  built from tissue-fraction maps the cord fraction itself is the soft target. Contrasts of one subject
  that share one mask (``sub-unf01``) share one soft target: the model is pushed to give the same answer
  whatever the contrast.
* **A regression loss.** Mean squared error between the sigmoid output and the soft target, plus a soft
  Dice term on the same soft target; there is no binarisation during training.
* **One model for every contrast**, trained on three kinds of slices mixed in every batch:
  real labelled slices (``bids-dev`` cords, with intensity augmentation), slices synthesised from the
  PAM50 template anatomy with random tissue intensities (any contrast), and slices synthesised from the
  real images' own anatomy (their cord mask plus intensity classes) with random tissue intensities.
* **Heavy augmentation** on the batch, in torch: random rotation, scale, shear and translation,
  intensity inversion and gamma, bias field, blur, noise, and in-plane resolution loss (down- then
  up-sampling by up to 3x per axis, as thick-slice and low-resolution acquisitions look on the 0.5 mm grid).
  Thick through-plane slices are simulated on the template by averaging tissue fractions over 1 to 8
  neighbouring 2 mm slices.

Modules: :mod:`.data` (slice pools), :mod:`.augment` (synthesis, augmentation, batches), :mod:`.train`
(loss, resumable loop), :mod:`.export`, :mod:`.calibrate`, :mod:`.evaluate`, :mod:`.card`; configs in
``configs/`` (``default.json``: stage 1, ``finetune.json``: stage 2, the shipped model).
"""
