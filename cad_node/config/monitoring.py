"""The ``monitoring`` settings: each model's drift against its baseline window (issue 22).

Example (YAML)::

    monitoring:
      baseline_weeks: 4            # the first 4 ISO weeks of a model's outputs
      baseline_since: null         # or a fixed window: baseline_since/baseline_until
      baseline_until: null
      current_days: 7
      psi_warn: 0.1
      psi_alert: 0.25
      min_samples: 20
      check_interval_seconds: 300
"""

from datetime import date
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

INPUT_FEATURES: tuple[str, ...] = (
    "Manufacturer",
    "ManufacturerModelName",
    "ConvolutionKernel",
    "BodyPartExamined",
    "SliceThickness",
    "PixelSpacing",
    "KVP",
)
"""The series attributes whose distribution is watched (PixelSpacing: its first value)."""
OUTPUT_FEATURES: tuple[str, ...] = ("score", "finding_count", "abstained")
"""The job outputs whose distribution is watched: study-level score, findings per study,
abstention rate."""
DRIFT_FEATURES: tuple[str, ...] = INPUT_FEATURES + OUTPUT_FEATURES

FeatureName = Annotated[str, Field(pattern=r"^[A-Za-z_]{1,64}$")]


class MonitoringSettings(BaseModel):
    """Model drift: baseline and current windows, PSI thresholds, the features watched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baseline_weeks: int = Field(default=4, ge=1, le=104)
    """The baseline: the first this many ISO weeks (UTC, from Monday) of a model's outputs."""
    baseline_since: date | None = None
    """A fixed baseline window instead, from this day (UTC, inclusive) ..."""
    baseline_until: date | None = None
    """... to this day (UTC, exclusive); either alone: from the first output / to now."""
    current_days: int = Field(default=7, ge=1, le=365)
    """The current window: the last this many days."""
    psi_warn: float = Field(default=0.1, gt=0)
    """A feature whose PSI reaches this is at ``warn``."""
    psi_alert: float = Field(default=0.25, gt=0)
    """... and at ``alert`` (``cad_node_model_drift_alert`` 1, the admin page's banner)."""
    min_samples: int = Field(default=20, ge=1, le=100000)
    """Fewer jobs than this in a window: ``too few``, never an alert."""
    features: tuple[FeatureName, ...] = DRIFT_FEATURES
    """Which of :data:`DRIFT_FEATURES` are watched."""
    check_interval_seconds: float = Field(default=300.0, ge=1.0, le=86400.0)
    """How often the node recomputes drift for /metrics and the banner."""

    @model_validator(mode="after")
    def _consistent(self) -> "MonitoringSettings":
        if self.psi_alert < self.psi_warn:
            raise ValueError(f"psi_alert {self.psi_alert} is below psi_warn {self.psi_warn}")
        since, until = self.baseline_since, self.baseline_until
        if since is not None and until is not None and until <= since:
            raise ValueError("baseline_until must be after baseline_since")
        unknown = [name for name in self.features if name not in DRIFT_FEATURES]
        if unknown:
            raise ValueError(
                f"unknown drift feature {unknown[0]!r}; known: {', '.join(DRIFT_FEATURES)}"
            )
        return self
