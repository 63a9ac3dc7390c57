"""Deterministic UIDs per (job, object), so a retried job resends the identical object.

Every UID is ``2.25.<int>`` of a name-based (SHA-1, version 5) UUID of the job
key and the object's role (PS3.5 Annex B.2, ISO/IEC 9834-8): the same job key
always gives the same UIDs, different keys or roles never collide in practice.
pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` is not used: with no
prefix it ignores ``entropy_srcs`` and returns a random UUID.

A re-run after a late image must use a new job key, so its objects are new
instances that reference the earlier ones.
"""

import json
import uuid
from dataclasses import dataclass

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/cad-node/cad-node/results/v1")


def _derived_uid(*parts: str) -> str:
    # JSON keeps ("a", "bc") and ("ab", "c") apart.
    return f"2.25.{uuid.uuid5(_NAMESPACE, json.dumps(parts)).int}"


@dataclass(frozen=True, slots=True)
class ResultUids:
    """The UIDs of the result objects of one job; build with :func:`result_uids`."""

    job_key: str
    seg_series_instance_uid: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    summary_tracking_uid: str
    """Tracking UID of the report's summary group when there is no finding."""

    def tracking_uid(self, finding_index: int) -> str:
        """Tracking Unique Identifier (DCM 112040) of finding ``finding_index``.

        The SEG segment (TrackingUID) and the SR groups of one finding share it.
        """
        if finding_index < 0:
            raise ValueError(f"finding index must not be negative, got {finding_index}")
        return _derived_uid(self.job_key, "tracking", str(finding_index))

    @property
    def overlay_series_instance_uid(self) -> str:
        """Series Instance UID of the job's burned-in Secondary Capture images."""
        return _derived_uid(self.job_key, "overlay", "series")

    def overlay_sop_instance_uid(self, image_index: int) -> str:
        """SOP Instance UID of the burned-in image of grid image ``image_index`` (a CT slice,
        a view)."""
        return _derived_uid(self.job_key, "overlay", "instance", _index(image_index))

    def seg_sop_instance_uid(self, seg_index: int) -> str:
        """SOP Instance UID of SEG ``seg_index``: a volume's one SEG is 0; a planar image set
        has one SEG per image with findings (highdicom needs one frame per SEG without a
        Frame of Reference), all in ``seg_series_instance_uid``."""
        return _derived_uid(self.job_key, "seg", "instance", _index(seg_index))

    def seg_dimension_organization_uid(self, seg_index: int) -> str:
        """Dimension Organization UID (PS3.3 C.7.6.17) of SEG ``seg_index``."""
        return _derived_uid(self.job_key, "seg", "dimension-organization", _index(seg_index))

    def assessment_tracking_uid(self, assessment_index: int) -> str:
        """Tracking UID of the SR group of a per-breast or per-eye assessment."""
        return _derived_uid(self.job_key, "assessment-tracking", _index(assessment_index))

    def classification_tracking_uid(self, classification_index: int) -> str:
        """Tracking UID of the SR group of a classifier's class probabilities."""
        return _derived_uid(self.job_key, "classification-tracking", _index(classification_index))

    def explanation_tracking_uid(self, explanation_index: int) -> str:
        """Tracking UID of the SR group of an explanation map that no other group holds."""
        return _derived_uid(self.job_key, "explanation-tracking", _index(explanation_index))

    @property
    def explanation_series_instance_uid(self) -> str:
        """Series Instance UID of the job's explanation images (heatmaps over the image)."""
        return _derived_uid(self.job_key, "explanation", "series")

    def explanation_sop_instance_uid(self, explanation_index: int) -> str:
        """SOP Instance UID of the Secondary Capture of explanation map ``explanation_index``."""
        return _derived_uid(self.job_key, "explanation", "instance", _index(explanation_index))

    # Parametric Maps of explanation maps, and the Key Object Selection of a job.

    @property
    def parametric_map_series_instance_uid(self) -> str:
        """Series Instance UID of the job's Parametric Maps (one per explanation map)."""
        return _derived_uid(self.job_key, "parametric-map", "series")

    def parametric_map_sop_instance_uid(self, explanation_index: int) -> str:
        """SOP Instance UID of the Parametric Map of explanation map ``explanation_index``."""
        return _derived_uid(self.job_key, "parametric-map", "instance", _index(explanation_index))

    def parametric_map_dimension_organization_uid(self, explanation_index: int) -> str:
        """Dimension Organization UID (PS3.3 C.7.6.17) of Parametric Map ``explanation_index``."""
        return _derived_uid(
            self.job_key, "parametric-map", "dimension-organization", _index(explanation_index)
        )

    @property
    def kos_series_instance_uid(self) -> str:
        """Series Instance UID of the job's Key Object Selection document."""
        return _derived_uid(self.job_key, "kos", "series")

    @property
    def kos_sop_instance_uid(self) -> str:
        """SOP Instance UID of the job's Key Object Selection document."""
        return _derived_uid(self.job_key, "kos", "instance")

    # Presentation states (result kind ``gsps``): one per group of source images.

    @property
    def gsps_series_instance_uid(self) -> str:
        """Series Instance UID of the job's Softcopy Presentation States."""
        return _derived_uid(self.job_key, "gsps", "series")

    def gsps_sop_instance_uid(self, state_index: int) -> str:
        """SOP Instance UID of presentation state ``state_index`` (one per source image group)."""
        return _derived_uid(self.job_key, "gsps", "instance", _index(state_index))


def _index(index: int) -> str:
    if index < 0:
        raise ValueError(f"index must not be negative, got {index}")
    return str(index)


def result_uids(job_key: str) -> ResultUids:
    """The UIDs of the SEG and SR a job produces, always the same for ``job_key``."""
    if not job_key:
        raise ValueError("job_key must not be empty")
    return ResultUids(
        job_key=job_key,
        seg_series_instance_uid=_derived_uid(job_key, "seg", "series"),
        sr_series_instance_uid=_derived_uid(job_key, "sr", "series"),
        sr_sop_instance_uid=_derived_uid(job_key, "sr", "instance"),
        summary_tracking_uid=_derived_uid(job_key, "sr", "summary-tracking"),
    )


def device_observer_uid(manufacturer_model_name: str, device_serial_number: str) -> str:
    """Device Observer UID (DCM 121012, PS3.16 TID 1004) of one cad-node installation."""
    return _derived_uid("device", manufacturer_model_name, device_serial_number)


def algorithm_device_uid(name: str, version: str, weights_sha256: str) -> str:
    """Device UID (0018,1002) of one model version: changes with its name, version or weights
    (IHE AIR's Contributing Equipment item of the algorithm)."""
    return _derived_uid("algorithm", name, version, weights_sha256)
