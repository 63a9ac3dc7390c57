"""States of the journal's rows; values are what the journal stores."""

from enum import StrEnum


class SeriesState(StrEnum):
    """Where a series is on its way through the node."""

    RECEIVING = "receiving"
    """Instances are arriving; the quiet timer runs."""
    COMPLETE = "complete"
    """No instance for ``quiet_seconds`` (or the expected count arrived); not yet routed."""
    ROUTED = "routed"
    """A rule matched and a job was queued."""
    UNROUTED = "unrouted"
    """Stored, but no rule matched."""
    QUARANTINED = "quarantined"
    """Its decoding timed out, ran out of memory or crashed the decoder; the reason is kept,
    it is not retried automatically (an admin may retry its job)."""


class JobState(StrEnum):
    """The life of one model run on one series revision."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    """The model refused the input or crashed; the reason is kept."""
    CANCELLED = "cancelled"
    """Cancelled by an admin before it ran; never claimed."""


class ResultKind(StrEnum):
    """Kinds of DICOM object a job produces."""

    SEG = "seg"
    SR = "sr"
    OVERLAY = "overlay"
    """Secondary Capture images with the findings burned in (only where a destination asks)."""
    EXPLANATION = "explanation"
    """Secondary Capture images of a classifier's activation map (Grad-CAM).

    The SR references them, so they go wherever the SR goes (and where a destination asks).
    """
    GSPS = "gsps"
    """Softcopy Presentation States drawing the findings over the source images (where asked)."""
    PARAMETRIC_MAP = "parametric_map"
    """Parametric Maps of a classifier's activation maps (float heatmaps, IHE AIR); the SR
    references them, so they go wherever the SR goes."""
    KOS = "kos"
    """The Key Object Selection document flagging the images with findings (where asked)."""


class DeliveryState(StrEnum):
    """The outcome of sending one result object to one destination."""

    PENDING = "pending"
    """Waiting for its next attempt (``next_attempt_at``)."""
    DELIVERED = "delivered"
    DELIVERED_WITH_WARNING = "delivered_with_warning"
    """The destination answered 0xB0xx: stored, with a warning."""
    SENT = "sent"
    """Stored at a destination that commits (Storage Commitment): its answer is awaited."""
    COMMITTED = "committed"
    """The destination reported the object committed: it has taken responsibility for it."""
    FAILED = "failed"
    """A permanent failure status, or retries exhausted; shown to the admin."""
