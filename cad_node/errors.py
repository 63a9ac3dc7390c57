"""One error tree for cad-node; third-party errors are translated at the edges."""


class CadNodeError(Exception):
    """Base of every error cad-node raises on purpose."""


class ConfigError(CadNodeError):
    """The configuration file is missing, unreadable or invalid."""


class RuleError(CadNodeError):
    """A routing rule is invalid."""


class InvalidSeriesError(CadNodeError):
    """A series cannot be a valid input for a model (one slice, mixed orientations ...)."""


class ModelError(CadNodeError):
    """A model cannot be loaded or run."""


class WeightsIntegrityError(ModelError):
    """A weights file does not match the sha256 in its manifest."""


class StorageError(CadNodeError):
    """The spool or the journal cannot be written."""


class ExportError(CadNodeError):
    """A result could not be delivered."""


class ResultBuildError(CadNodeError):
    """A result object (SEG, SR) cannot be built from a model's output and its series."""
