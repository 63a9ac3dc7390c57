"""Typed node settings from one YAML file, validated at start-up.

:mod:`~cad_node.config.settings` holds the model tree (the admin's contract,
config/node.yaml documents each key), :mod:`~cad_node.config.loading` reads it from
YAML and words its errors. Import either from here.
"""

from cad_node.config.dicomweb import (
    DicomWebAuthSettings,
    DicomWebDestinationSettings,
    DicomWebSettings,
)
from cad_node.config.loading import (
    DEFAULT_CONFIG,
    format_location,
    format_validation_error,
    load_rules,
    load_settings,
    parse_rules,
)
from cad_node.config.settings import (
    DEFAULT_STUDY_GROUPS,
    WEAK_TOKEN_SHA256,
    WEAK_TOKENS,
    AdminSettings,
    AdminToken,
    AETitle,
    AnyDestinationSettings,
    DecodingSettings,
    DestinationSettings,
    DestinationTlsSettings,
    ExportSettings,
    HealthSettings,
    IngestLimitSettings,
    PeerSettings,
    RetentionSettings,
    ServerTlsSettings,
    Settings,
    TimeoutSettings,
    check_host,
    listens_everywhere,
)
from cad_node.domain.values import check_ae_title
from cad_node.results.options import ResultSettings

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_STUDY_GROUPS",
    "WEAK_TOKENS",
    "WEAK_TOKEN_SHA256",
    "AETitle",
    "AdminSettings",
    "AdminToken",
    "AnyDestinationSettings",
    "DecodingSettings",
    "DestinationSettings",
    "DestinationTlsSettings",
    "DicomWebAuthSettings",
    "DicomWebDestinationSettings",
    "DicomWebSettings",
    "ExportSettings",
    "HealthSettings",
    "IngestLimitSettings",
    "PeerSettings",
    "ResultSettings",
    "RetentionSettings",
    "ServerTlsSettings",
    "Settings",
    "TimeoutSettings",
    "check_ae_title",
    "check_host",
    "format_location",
    "format_validation_error",
    "listens_everywhere",
    "load_rules",
    "load_settings",
    "parse_rules",
]
