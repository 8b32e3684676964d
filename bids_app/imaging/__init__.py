"""Shared image work for every task: plain SimpleITK/numpy functions, no Nipype, no torch.

``grid`` (checks, reorientation, resampling), ``bias`` (N4), ``registration`` (rigid/affine),
``brain`` (brain masks, intensity normalisation), ``template_space`` (an image to the template and
back), ``templates`` (the offline TemplateFlow home). The interfaces that wrap these functions live in
the task packages. Every function takes and
returns ``SimpleITK.Image`` objects (or numpy arrays for :func:`normalise_intensity`) and raises
``ValueError`` with a hint on how to fix a bad input.

Conventions
-----------
* **Physical space.** SimpleITK/ITK express every position in millimetres in the **LPS+** world
  (x grows to the patient's Left, y to Posterior, z to Superior). NIfTI/nibabel use **RAS+**
  (x to Right, y to Anterior, z to Superior): the same point has ``(x, y, z)_RAS = (-x, -y, z)_LPS``.
  ITK's NIfTI reader and writer do this conversion, so a file read here and written back keeps
  its world coordinates. Transforms below are in the LPS+ world, in mm and radians.
* **Voxel order.** ``sitk.GetArrayFromImage(image)`` is indexed ``[k, j, i]`` (z, y, x, i.e.
  reversed); nibabel's ``get_fdata()`` is indexed ``[i, j, k]``. ``image.GetSize()`` is ``(ni, nj, nk)``.
* **Transforms** follow ITK's convention: a registration result maps points of the *fixed* image's
  space to points of the *moving* image's space, which is exactly what resampling the moving image
  onto the fixed grid needs (:func:`resample_to`). To go the other way use ``transform.GetInverse()``.
* **Threads.** Functions that do heavy work take ``threads``: ``None`` keeps SimpleITK's global
  default (all cores unless ``sitk.ProcessObject.SetGlobalDefaultNumberOfThreads`` was called); an
  integer limits that call only: it is set on the filter and, for the duration of the call, as
  SimpleITK's global default (the internal filters of N4 and of the registration read the global
  value), which is restored afterwards.
* **Reproducibility.** Registration samples the metric at random points with a fixed seed
  (``seed``, default :data:`DEFAULT_SEED`), so the sample set is the same on every run. With
  ``threads=1`` the result is bit-identical from run to run. With several threads ITK sums the
  metric's partial histograms in an order that varies between runs (both with its "Platform" and
  its "Pool" threader): on the test phantom the parameters then differ by up to ~1e-5 (radians,
  mm), far below a voxel, but on a real thick-slice FLAIR two 2-thread runs differed by 2 % in
  scale and 0.6 mm in shift, so :func:`to_template_space` always registers with one thread.
"""

from __future__ import annotations


