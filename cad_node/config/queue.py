"""The ``queue`` settings: clinical priority classes, lanes that run at once, batching.

Example (YAML)::

    queue:
      age_limit_minutes: {screening: 240, routine: 60, urgent: 15}
      target_seconds: {stat: 120, urgent: 600}
      calling_ae_classes: {ED_CT: stat}
      lanes:
        ct: {models: [lung_nodule_ct], threads: 2}
        planar: {models: [mammo_screening, fundus_dr], threads: 1, batch_size: 4}
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cad_node.domain.priority import PriorityClass

AETitleKey = Annotated[str, Field(min_length=1, max_length=16)]


class LaneSettings(BaseModel):
    """One lane: a worker thread that runs only its models' jobs, warm, within its budgets.
    ``models: ["*"]``: every model no other lane names (jobs of a model no lane names wait)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = Field(min_length=1)
    threads: int = Field(default=1, ge=1, le=256)
    """CPU threads torch uses for one operator in this lane (``torch.set_num_threads`` in
    the lane's thread)."""
    memory_mb: float | None = Field(default=None, gt=0)
    """Memory budget of each model, measured at load (on a GPU torch's allocated bytes, on
    the CPU its parameters and buffers); a model over it is refused at start-up."""
    batch_size: int = Field(default=1, ge=1, le=64)
    """Queued 2D jobs of one model run through one forward pass, up to this many (1: none)."""


class QueueSettings(BaseModel):
    """Priority classes' age limits and time-to-result targets, AE classes and lanes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    age_limit_minutes: dict[PriorityClass, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict
    )
    """A queued job waiting longer than its class's limit is promoted one class (none: never);
    the wait restarts at each promotion."""
    target_seconds: dict[PriorityClass, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    """Time-to-result target per class (last instance received -> results written); the
    ``cad_node_time_to_result_target_missed`` gauge is 1 while a class's p90 exceeds it."""
    calling_ae_classes: dict[AETitleKey, PriorityClass] = Field(default_factory=dict)
    """Classes of sending AE titles, for rules with ``priority_from: calling_ae``."""
    promotion_interval_seconds: float = Field(default=30.0, ge=1.0, le=3600.0)
    lanes: dict[Annotated[str, Field(pattern=r"^[a-z0-9_-]{1,32}$")], LaneSettings] = Field(
        default_factory=dict
    )
    """Lanes by name; none: ``workers`` threads each take any job, most urgent first."""

    @model_validator(mode="after")
    def _one_lane_per_model(self) -> "QueueSettings":
        seen: dict[str, str] = {}
        for name, lane in self.lanes.items():
            for model in lane.models:
                if model in seen:
                    raise ValueError(
                        f"model {model!r} is in lanes {seen[model]!r} and {name!r}; "
                        "a model runs in one lane"
                    )
                seen[model] = name
        return self
