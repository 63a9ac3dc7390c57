"""Result objects: DICOM SEG and TID 1500 SR of a model's findings, built with highdicom.

The worker's use::

    uids = result_uids(job_key)  # stored with the job: a retry rebuilds the same objects
    seg = build_seg(sources, volume, result, uids, options, content_datetime=job_created_at)
    sr = build_sr(sources, volume, result, seg, uids, options, predecessors,
                  content_datetime=job_created_at)

    overlays = build_overlays(sources, volume, result, uids, options)  # if a destination asks
    states = build_gsps(sources, volume, result, uids, options)  # presentation states, likewise

Mammography and fundus results (a :class:`~cad_node.domain.planar.PlanarResult`
over an image set) go through one call that returns the SEGs, the SR, the
overlays and the explanation images::

    objects = build_planar_objects(sources, image_set, result, uids, options, predecessors,
                                   overlay=True)

Their presentation states come from ``build_planar_gsps(sources, image_set, result, uids,
options)``.

With no finding, skip the SEG (it needs a segment) and pass ``seg=None``.
Both raise ``cad_node.errors.ResultBuildError`` on inputs they cannot use.
A core module: imports highdicom, pydicom and numpy, never a network,
database or deep-learning library.
"""

from cad_node.results.gsps import build_gsps, build_planar_gsps
from cad_node.results.options import ResultOptions
from cad_node.results.overlay import build_overlays
from cad_node.results.planar import PlanarObjects, build_planar_objects
from cad_node.results.seg import build_seg
from cad_node.results.sr import build_sr
from cad_node.results.uids import ResultUids, result_uids

__all__ = [
    "PlanarObjects",
    "ResultOptions",
    "ResultUids",
    "build_gsps",
    "build_overlays",
    "build_planar_gsps",
    "build_planar_objects",
    "build_seg",
    "build_sr",
    "result_uids",
]
