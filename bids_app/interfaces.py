"""Nipype interfaces shared by every task: reorientation and the one BIDS-Derivatives writer node.

Interfaces are thin: each reads files, calls a plain function, writes files. Task-specific nodes live
in the task's package (``bids_app/<task>/interfaces.py``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject, OutputMultiObject, SimpleInterface,
                                    TraitedSpec, isdefined, traits)

from bids_app import outputs
from bids_app.inputs import load_checked

LOGGER = logging.getLogger(__name__)


# MultiProc workers start from a fork server with Nipype's default (INFO) log levels and console
# handlers; the CLI passes the run's level and log file through the environment and this module,
# imported by every worker, applies them: a worker's node errors go to the log file (the main
# process reports each failure in one line), and to the console only with -v.
if os.environ.get("NEUROSEG_NIPYPE_LOG_LEVEL"):
    _log_file = os.environ.get("NEUROSEG_LOG_FILE")
    _to_console = os.environ.get("NEUROSEG_NIPYPE_CONSOLE") == "1"
    for _name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        _logger = logging.getLogger(_name)
        _logger.setLevel(os.environ["NEUROSEG_NIPYPE_LOG_LEVEL"])
        if _log_file and not _to_console and not any(isinstance(h, logging.FileHandler) for h in _logger.handlers):
            _handler = logging.FileHandler(_log_file, delay=True)  # append mode: whole lines from each process
            _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [worker %(process)d]: "
                                                    "%(message)s"))
            _logger.handlers[:] = [_handler]
            _logger.propagate = False


def _out_path(runtime_cwd: str, in_file: str, suffix: str, ext: str = ".nii.gz") -> str:
    stem = Path(in_file).name.split(".")[0]
    return str(Path(runtime_cwd) / f"{stem}_{suffix}{ext}")


def _save_like(data: np.ndarray, reference: nib.Nifti1Image, path: str, dtype) -> None:
    """Save ``data`` with the affine of ``reference``; float outputs keep 0..1 without scaling."""
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine)
    img.set_qform(reference.affine, code=1)
    img.set_sform(reference.affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


# ----------------------------------------------------------------------------------------------------
class _ReorientInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image on its native grid")


class _ReorientOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the same voxels in closest-canonical RAS+ orientation, float32")


class Reorient(SimpleInterface):
    """Reorient to RAS+ by permuting/flipping axes only (no interpolation)."""

    input_spec = _ReorientInputSpec
    output_spec = _ReorientOutputSpec

    def _run_interface(self, runtime):
        img, _ = load_checked(Path(self.inputs.in_file))  # refuses truncated data, NaN-filled images
        canonical = nib.as_closest_canonical(img)
        self._results["out_file"] = _out_path(runtime.cwd, self.inputs.in_file, "ras")
        _save_like(np.asarray(canonical.dataobj, dtype=np.float32), canonical, self._results["out_file"], np.float32)
        return runtime


# ----------------------------------------------------------------------------------------------------
class _SinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="file to store")
    output_dir = traits.Directory(mandatory=True, desc="derivatives root")
    source_relpath = traits.Str(mandatory=True, desc="source image path relative to the raw dataset")
    source_entities = traits.Dict(mandatory=True, desc="pybids entities of the source image")
    label = traits.Str(mandatory=True, desc="label entity")
    suffix = traits.Str(mandatory=True, desc="BIDS suffix: probseg, mask, morph")
    desc_extra = traits.Str("", usedefault=True, desc="appended to the source suffix in desc")
    model = traits.Dict(desc="model name, version, sha256")
    version = traits.Str(mandatory=True, desc="app version")
    extra = traits.Dict(desc="more sidecar fields")
    other_sources = traits.List(traits.Str, desc="raw-dataset paths of other images used (listed in Sources)")
    source_digests = traits.Dict(desc="sha256 of every input file (sidecar SourceDigests, checked on resume)")
    companion_file = File(exists=True, desc="a file stored beside in_file under its name with companion_extension, "
                                            "described by the same sidecar (a dseg's .tsv lookup table)")
    companion_extension = traits.Str("", usedefault=True, desc="extension of companion_file's derivative, e.g. .tsv")


class _SinkOutputSpec(TraitedSpec):
    out_file = File(desc="written derivative")


class DerivativesSink(SimpleInterface):
    """Store one file in the derivatives with its sidecar, via :mod:`bids_app.outputs`."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec

    @staticmethod
    def relpath(inputs) -> Path:
        """Path of the derivative under ``output_dir``, from the node's static inputs (known before
        the run, so that a rerun can tell whether an image's outputs are complete). QC figures
        (suffix ``qc``) go to the participant's ``figures/`` folder, as fMRIPrep's do."""
        entities = dict(inputs.source_entities)
        if inputs.suffix == outputs.FIGURE_SUFFIX:
            entities["datatype"] = "figures"
        ext = {"morph": ".tsv", outputs.FIGURE_SUFFIX: ".png"}.get(inputs.suffix, ".nii.gz")
        return outputs.derivative_relpath(entities, inputs.label, inputs.suffix, ext, inputs.desc_extra)

    @staticmethod
    def relpaths(inputs) -> list[Path]:
        """Every derivative the node writes: :meth:`relpath` and, with a ``companion_extension``, the
        companion beside it (same name, that extension; both share one sidecar)."""
        main = DerivativesSink.relpath(inputs)
        if not inputs.companion_extension:
            return [main]
        stem = outputs.expected_files(main)[1].name[: -len(".json")]
        return [main, main.with_name(stem + inputs.companion_extension)]

    def _run_interface(self, runtime):
        relpath = self.relpath(self.inputs)
        extra = dict(self.inputs.extra) if isdefined(self.inputs.extra) else {}
        if relpath.name.endswith(".nii.gz"):  # images stay on the source image's grid
            extra.setdefault("SpatialReference", f"bids:raw:{self.inputs.source_relpath}")
        if isdefined(self.inputs.source_digests):
            extra["SourceDigests"] = dict(self.inputs.source_digests)
        content = outputs.sidecar(self.inputs.source_relpath,
                                  self.inputs.model if isdefined(self.inputs.model) else None,
                                  self.inputs.version,
                                  other_sources=self.inputs.other_sources if isdefined(self.inputs.other_sources) else (),
                                  **extra)
        companions = []
        if self.inputs.companion_extension and isdefined(self.inputs.companion_file):
            companions.append((Path(self.inputs.companion_file), self.relpaths(self.inputs)[1]))
        self._results["out_file"] = str(outputs.write_output(Path(self.inputs.output_dir), Path(self.inputs.in_file),
                                                             relpath, content, companions))
        return runtime


# ----------------------------------------------------------------------------------------------------
class _FiguresInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="files passed, in order, to the render function (image, maps, masks)")
    render = traits.Str(mandatory=True, desc="dotted path of the task's render function (its qc module)")
    views = traits.List(traits.Str, mandatory=True, desc="figure names, in the order out_files lists them")
    params = traits.Dict(desc="keyword arguments of the render function")


class _FiguresOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True), desc="one PNG per view, in the order of views")


class Figures(SimpleInterface):
    """Render a task's QC figures (``render(*in_files, **params) -> {view: PNG bytes}``) into files."""

    input_spec = _FiguresInputSpec
    output_spec = _FiguresOutputSpec

    def _run_interface(self, runtime):
        from bids_app.tasks import load_function

        params = dict(self.inputs.params) if isdefined(self.inputs.params) else {}
        figures = load_function(self.inputs.render)(*self.inputs.in_files, **params)
        files = []
        for view in self.inputs.views:
            path = _out_path(runtime.cwd, self.inputs.in_files[0], view, ".png")
            Path(path).write_bytes(figures[view])
            files.append(path)
        self._results["out_files"] = files
        return runtime


def pick(files: list, index: int):
    """Connection helper: the ``index``-th file of a node's list output."""
    return files[index]
