"""Result objects of a model run, built with highdicom: one builder per DICOM object.

Every model's answer becomes a :class:`~cad_node.domain.results.ModelReport` (the
findings, assessments and explanation maps on the images it read), and every object
comes from it, the same for a CT volume and a 2D image set (as the worker does,
:mod:`cad_node.pipeline.work`)::

    report = volume_report(volume, result, study_uid)  # or planar_report(image_set, result)
    options = settings.result_options().at(job_created_at).for_model(model_name)
    objects = build_result_objects(
        datasets, report, result_uids(job_key), options, predecessors, overlay=True, gsps=False
    )
    # objects.sr, objects.segs, objects.parametric_maps, objects.kos, objects.overlays ...

- SEG (:mod:`~cad_node.results.seg`), TID 1500 SR (:mod:`~cad_node.results.sr`),
  Parametric Maps of explanation maps (:mod:`~cad_node.results.pmap`), the Key Object
  Selection of the images with findings (:mod:`~cad_node.results.kos`);
- for viewers that show none of those: burned-in Secondary Captures
  (:mod:`~cad_node.results.overlay`) and presentation states (:mod:`~cad_node.results.gsps`);
- when the model abstained (its input outside its validated domain or out of distribution),
  the NOT ASSESSED SR alone (:func:`build_abstention_objects`, :mod:`~cad_node.results.abstention`).

Each carries IHE AI Results' Evidence Creator content: the algorithm's Contributing
Equipment item and TID 4019 (:mod:`~cad_node.results.algorithm`), public codes
(:mod:`~cad_node.results.codes`) and Tracking UIDs stable across re-runs
(:mod:`~cad_node.results.tracking`).  Builders raise ``cad_node.errors.ResultBuildError``
on inputs they cannot use.  A core package: imports highdicom, pydicom, numpy, Pillow and
scikit-image, never a network, database or deep-learning library.
"""

from cad_node.results.abstention import build_abstention_objects
from cad_node.results.build import (
    ResultObjects,
    build_planar_objects,
    build_result_objects,
    build_volume_objects,
)
from cad_node.results.options import ResultOptions
from cad_node.results.uids import ResultUids, result_uids

__all__ = [
    "ResultObjects",
    "ResultOptions",
    "ResultUids",
    "build_abstention_objects",
    "build_planar_objects",
    "build_result_objects",
    "build_volume_objects",
    "result_uids",
]
