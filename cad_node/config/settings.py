"""The node's settings: one tree of frozen pydantic models, the admin's contract.

Every model forbids unknown keys and is frozen; config/node.yaml documents each key.
Loading a file (YAML, a rules file beside it, error messages naming key and line) is
:mod:`cad_node.config.loading`'s; nothing here reads a file. DICOM value rules (AE, CS,
LO, IS) come from :mod:`cad_node.domain.values`, the ``results`` section from
:mod:`cad_node.results.options`.
"""

import hashlib
import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    IPvAnyNetwork,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from cad_node.assembly.completion import StudyGrouping
from cad_node.config.dicomweb import DicomWebDestinationSettings, DicomWebSettings
from cad_node.config.monitoring import MonitoringSettings
from cad_node.config.queue import QueueSettings
from cad_node.domain.states import ResultKind
from cad_node.domain.values import check_ae_title, check_code_string
from cad_node.results.options import ResultOptions, ResultSettings
from cad_node.routing.rules import Rule, check_rule_set

AETitle = Annotated[str, AfterValidator(check_ae_title)]


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerTlsSettings(_Settings):
    """DICOM TLS on the node's Storage SCP (PS3.15 Annex B.9); see docs/security.md."""

    certificate: Path
    """PEM certificate (chain) the node presents."""
    private_key: Path
    """PEM private key of ``certificate``, unencrypted (readable by the node's user only)."""
    ca_certificates: Path | None = None
    """PEM CA bundle; when set, every peer must present a certificate it signed (mutual TLS)."""


class DestinationTlsSettings(_Settings):
    """DICOM TLS to one destination: its certificate is verified, host name included."""

    ca_certificates: Path | None = None
    """PEM CA bundle that signed the destination's certificate; ``None``: the system's."""
    certificate: Path | None = None
    """PEM client certificate, for a destination that requires mutual TLS."""
    private_key: Path | None = None
    server_hostname: str | None = None
    """The name the destination's certificate must carry; ``None``: ``host``."""

    @model_validator(mode="after")
    def _certificate_with_key(self) -> "DestinationTlsSettings":
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


def _is_host_label(label: str) -> bool:
    """RFC 1123 (and the underscores of container names): letters, digits, - and _."""
    plain = label.replace("-", "").replace("_", "")
    characters_ok = plain.isascii() and (plain == "" or plain.isalnum())
    edges_ok = not label.startswith("-") and not label.endswith("-")
    return 0 < len(label) <= 63 and characters_ok and edges_ok


def check_host(host: str) -> str:
    """``host`` if it is an IP address or a DNS host name, else ``ValueError`` saying why."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        if len(host) > 253 or labels[-1].isdigit() or not all(map(_is_host_label, labels)):
            raise ValueError(
                f"{host!r} is not an IP address or a DNS host name "
                "(write only the name, e.g. pacs.example.org or 10.0.0.5: "
                "no scheme, port, path or spaces)"
            ) from None
    return host


class DestinationSettings(_Settings):
    """A DICOM peer that receives results by C-STORE (a PACS, a viewer)."""

    host: Annotated[str, AfterValidator(check_host)] = Field(min_length=1, max_length=253)
    """An IP address or a DNS host name."""
    port: int = Field(ge=1, le=65535)
    ae_title: AETitle
    tls: DestinationTlsSettings | None = None
    """DICOM TLS to this destination; ``None``: plain TCP."""
    results: tuple[ResultKind, ...] = (ResultKind.SEG, ResultKind.SR)
    """The kinds of result object this destination receives."""
    commitment: bool = False
    """Ask it to commit what it stored (Storage Commitment Push Model, PS3.4 Annex J): a
    delivery ends ``committed`` when it says so, and is sent again when it reports a failure."""
    commitment_delay_seconds: float = Field(default=0.0, ge=0.0, le=86400.0)
    """Wait this long after storing before asking (a PACS that archives before it commits)."""
    commitment_timeout_seconds: float = Field(default=300.0, gt=0.0, le=604800.0)
    """No N-EVENT-REPORT this long after the N-ACTION: the node asks again."""
    commitment_max_requests: int = Field(default=5, ge=1, le=1000)
    """Requests without an answer before the delivery is given up (failed: a dead letter)."""
    commitment_report_wait_seconds: float = Field(default=2.0, ge=0.0, le=60.0)
    """How long the N-ACTION's association stays open for an N-EVENT-REPORT on it; a report
    the PACS sends on an association of its own is taken at any time."""

    @field_validator("results")
    @classmethod
    def _some_results(cls, results: tuple[ResultKind, ...]) -> tuple[ResultKind, ...]:
        if not results:
            raise ValueError("name at least one result kind (seg, sr)")
        return tuple(dict.fromkeys(results))


DESTINATION_TAG_PREFIX = "destination:"
"""Of the union's tags, which error messages leave out of the key path."""


def _destination_type(value: object) -> str:
    """A destination's ``type``: ``dicomweb``, else ``dimse`` (C-STORE, written without type)."""
    found = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return DESTINATION_TAG_PREFIX + ("dimse" if found is None else str(found))


AnyDestinationSettings = Annotated[
    Annotated[DestinationSettings, Tag(DESTINATION_TAG_PREFIX + "dimse")]
    | Annotated[DicomWebDestinationSettings, Tag(DESTINATION_TAG_PREFIX + "dicomweb")],
    Discriminator(
        _destination_type,
        custom_error_type="destination_type",
        custom_error_message="type must be dicomweb (STOW-RS), or left out for C-STORE",
    ),
]
"""A destination: C-STORE (no ``type``) or STOW-RS (``type: dicomweb``)."""


def _check_network(value: object) -> object:
    """``value`` if it is an IP address or network; else ``ValueError`` saying why."""
    if isinstance(value, str):
        try:
            ipaddress.ip_network(value)
        except ValueError as exc:
            raise ValueError(f"not an IP address or network: {exc}") from None
    return value


class PeerSettings(_Settings):
    """A DICOM peer that may associate with the node (docs/security.md, "Peers").

    A PACS that sends images and receives results is configured twice: here (what
    it may send in, and from where) and under ``destinations`` (where results go).
    """

    ae_title: AETitle
    """Its calling AE title."""
    addresses: tuple[Annotated[IPvAnyNetwork, BeforeValidator(_check_network)], ...] = Field(
        min_length=1
    )
    """IP addresses or networks it connects from, e.g. ``10.2.0.15`` or ``10.2.0.0/24``;
    an AE title alone is trivially spoofed."""
    services: tuple[Literal["echo", "store"], ...] = Field(default=("echo", "store"), min_length=1)
    """What it may do: ``echo`` (C-ECHO), ``store`` (C-STORE images in)."""


class TimeoutSettings(_Settings):
    """Timeouts of one outgoing association, in seconds (PS3.8 ARTIM, DIMSE)."""

    connect_seconds: float = Field(default=10.0, gt=0)
    """TCP connection to the destination."""
    acse_seconds: float = Field(default=30.0, gt=0)
    """Association request/release answers (ARTIM)."""
    dimse_seconds: float = Field(default=60.0, gt=0)
    """One C-STORE response."""
    network_seconds: float = Field(default=60.0, gt=0)
    """Silence on an established association before it is aborted."""


class DecodingSettings(_Settings):
    """Bounds of one series' decode in the worker's decoder process (docs/security.md)."""

    timeout_seconds: float = Field(default=300.0, gt=0)
    """Wall time to decode one series; a 2000-slice JPEG 2000 CT takes about 2 minutes on one
    slow core. Past it the decoder is killed and the series quarantined."""
    memory_mb: int = Field(default=8192, ge=256)
    """The decoder's address-space limit in MiB: a 2000-slice 512x512 CT needs about 3.5 GB
    (its encoded slices and the float32 volume). Past it the series is quarantined."""


class IngestLimitSettings(_Settings):
    """What one peer may cost the node before it is refused (docs/security.md, "Bounds")."""

    max_associate_rq_bytes: int = Field(default=65536, ge=4096, le=1 << 24)
    """Largest A-ASSOCIATE-RQ PDU accepted; DCMTK's ``storescu`` proposing every storage
    class it knows sends 9.6 to 11.3 KiB. A longer one is refused before it is read."""
    max_connections_per_address: int = Field(default=32, ge=1, le=4096)
    """Open connections from one source address (per ingest process); the next is closed at
    once and logged. Above the 16 associations the node serves, so that a sender asking for
    a 17th still gets the stated local-limit-exceeded rejection."""
    acse_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """ARTIM (PS3.8 9.1.5): a new connection's whole A-ASSOCIATE-RQ must arrive within it;
    one that says nothing, or stops mid-PDU, is closed."""
    network_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """On an association: silence, or one PDU's read stalled, this long aborts it."""
    max_instance_bytes: int = Field(default=2 << 30, ge=1 << 20)
    """Largest data set stored, as received and, for Deflated data sets, once inflated;
    a larger one is answered 0xA700 (Out of Resources) and nothing is kept."""
    max_header_bytes: int = Field(default=64 << 20, ge=1 << 20)
    """Largest total of the elements before Pixel Data that ingest and the worker will
    parse; a data set with a larger header is refused with 0xA700."""


class ExportSettings(_Settings):
    """Retry policy and timeouts of the C-STORE SCU that delivers results."""

    initial_backoff_seconds: float = Field(default=5.0, gt=0)
    max_backoff_seconds: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=20, ge=1)
    """Attempts per result and destination before it is marked failed."""
    max_files_per_association: int = Field(default=100, ge=1)
    timeouts: TimeoutSettings = TimeoutSettings()

    @model_validator(mode="after")
    def _ordered_backoff(self) -> "ExportSettings":
        if self.max_backoff_seconds < self.initial_backoff_seconds:
            raise ValueError("max_backoff_seconds must be >= initial_backoff_seconds")
        return self


class HealthSettings(_Settings):
    """What the node watches about itself and its destinations, for the dashboard and metrics."""

    echo_interval_seconds: float = Field(default=60.0, ge=5.0, le=86400.0)
    """How often each destination is sent a C-ECHO (verification); its outcome is shown."""
    min_free_disk_fraction: float = Field(default=0.10, ge=0.0, le=1.0)
    """Below this share of free space on the storage folder's file system the dashboard
    warns and ``cad_node_storage_low`` is 1."""


class RetentionSettings(_Settings):
    """When spooled images and result files are removed; the journal keeps every row."""

    enabled: bool = True
    keep_hours: float = Field(default=72.0, ge=0.0)
    """Hours a series' files are kept after every delivery of its results ended delivered;
    a series with a job or a delivery not yet ended is never purged."""
    keep_unrouted_hours: float | None = Field(default=None, ge=0.0)
    """Hours an unrouted series (no rule matched) is kept after it completed; ``None``: kept
    until removed by ``cad-node purge --unrouted``."""
    interval_seconds: float = Field(default=600.0, ge=10.0)
    """How often the node looks for files it may remove."""


_SHA256_HEX = r"^[0-9a-f]{64}$"

WEAK_TOKENS = (
    "",
    "password",
    "Password",
    "password1",
    "password123",
    "admin",
    "administrator",
    "changeme",
    "change-me",
    "token",
    "secret",
    "test",
    "letmein",
    "qwerty",
    "123456",
    "12345678",
    "cadnode",
    "cad-node",
)
"""Tokens an attacker tries first (the example configs once showed sha256("password"))."""
WEAK_TOKEN_SHA256 = {hashlib.sha256(token.encode()).hexdigest(): token for token in WEAK_TOKENS}


class AdminToken(_Settings):
    """A bearer token of the admin API, stored as the sha256 of the token (never the token)."""

    name: str = Field(min_length=1, max_length=64)
    """Who holds it: the actor the audit log records."""
    sha256: str = Field(pattern=_SHA256_HEX)
    """Lower-case hex sha256 of the token, e.g. ``printf %s TOKEN | sha256sum``."""
    role: Literal["read", "admin", "send", "review"] = "read"
    """``send``: only stores images by STOW-RS (``POST /dicomweb/studies``); ``review``: reads
    as ``read`` does and posts radiologists' feedback (``POST /api/feedback``)."""

    @model_validator(mode="after")
    def _not_a_well_known_token(self) -> "AdminToken":
        weak = WEAK_TOKEN_SHA256.get(self.sha256)
        if weak is not None:
            raise ValueError(
                f"token {self.name!r} is the sha256 of the well-known token {weak!r}, which "
                "anyone can guess; generate one with "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))' "
                "and store its printf %s TOKEN | sha256sum"
            )
        return self


class AdminSettings(_Settings):
    """The admin HTTP API and web page."""

    enabled: bool = True
    bind_address: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=0, le=65535)
    """0 picks a free port (tests)."""
    tokens: tuple[AdminToken, ...] = ()
    """No token: every request but health is refused (401)."""
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=1 << 30)
    """Largest request body accepted; a larger one is answered 413 before it is read."""


def listens_everywhere(bind_address: str) -> bool:
    """Whether ``bind_address`` is the unspecified address (``0.0.0.0``, ``::``): every
    interface of the host."""
    try:
        return ipaddress.ip_address(bind_address).is_unspecified
    except ValueError:
        return False


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _error_at(loc: tuple[str, ...], message: str, value: object) -> ValidationError:
    """A cross-field error reported at ``loc``, so that the message names the key and line."""
    error = PydanticCustomError("value_error", "{reason}", {"reason": message})
    return ValidationError.from_exception_data(
        "Settings", [InitErrorDetails(type=error, loc=loc, input=value)]
    )


Modality = Annotated[str, BeforeValidator(_upper), AfterValidator(check_code_string)]
"""A Modality (CS), written in any case."""

DEFAULT_STUDY_GROUPS: Mapping[str, StudyGrouping] = {
    "MG": StudyGrouping.FOUR_VIEWS,
    "OP": StudyGrouping.QUIET,
}
"""Mammography (four views) and ophthalmic photography (both eyes) are read per study."""


class Settings(_Settings):
    """The node's configuration: the admin's contract (config/node.yaml documents each key)."""

    ae_title: AETitle = "CADNODE"
    port: int = Field(default=11112, ge=0, le=65535)
    """0 picks a free port (tests)."""
    bind_address: str = Field(default="127.0.0.1", min_length=1)
    """Where the Storage SCP listens: this machine only by default; every interface
    (``0.0.0.0``, ``::``) needs ``peers``, ``allowed_calling_aets`` or ``accept_any_peer``."""
    allowed_calling_aets: tuple[AETitle, ...] = ()
    """Calling AE titles accepted at association from any address; empty (and no ``peers``)
    accepts any."""
    peers: dict[str, PeerSettings] = Field(default_factory=dict)
    """Peers accepted only from their addresses, each for its services."""
    accept_any_peer: bool = False
    """Listen on every interface with neither ``peers`` nor ``allowed_calling_aets``:
    any machine that reaches the port may store. Refused at start-up unless set."""
    tls: ServerTlsSettings | None = None
    """DICOM TLS on the Storage SCP's port; ``None``: plain TCP."""
    storage_dir: Path = Path("./cad-node-data")
    database_url: str | None = None
    """SQLAlchemy URL; ``None``: SQLite file ``journal.sqlite`` inside ``storage_dir``."""
    quiet_seconds: float = Field(default=10.0, gt=0)
    study_groups: dict[Modality, StudyGrouping] = Field(
        default_factory=lambda: dict(DEFAULT_STUDY_GROUPS)
    )
    """Modalities whose series are read per study (four mammography views, both eyes)."""
    destinations: dict[str, AnyDestinationSettings] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    """The routing rules; in the YAML file a path to a rules file may stand instead, read
    relative to the config file by :func:`~cad_node.config.loading.load_settings`."""
    results: ResultSettings = ResultSettings()
    export: ExportSettings = ExportSettings()
    models_dir: Path | None = None
    """Site models (``cad-node models add``); ``None``: ``models`` inside ``storage_dir``."""
    workers: int = Field(default=1, ge=0, le=64)
    """Worker threads in ``cad-node serve``; 0: jobs are left to ``cad-node worker`` processes."""
    ingest_processes: int = Field(default=1, ge=1, le=32)
    """Processes accepting on ``port``'s listening socket; over 1 uses more cores for ingest."""
    lease_seconds: float = Field(default=300.0, gt=0)
    """How long a worker holds a job without a heartbeat before another may reclaim it."""
    queue: QueueSettings = QueueSettings()
    """Clinical priority classes (age limits, time-to-result targets), lanes, batching."""
    decoding: DecodingSettings = DecodingSettings()
    limits: IngestLimitSettings = IngestLimitSettings()
    admin: AdminSettings = AdminSettings()
    dicomweb: DicomWebSettings = DicomWebSettings()
    """The STOW-RS endpoint on the admin port."""
    health: HealthSettings = HealthSettings()
    retention: RetentionSettings = RetentionSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    """Model drift: baseline window, PSI thresholds, features (issue 22)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    """CPU threads per torch operator; ``None``: torch's default (one per core)."""
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = (
        "INFO"
    )

    @field_validator("destinations")
    @classmethod
    def _destination_names(
        cls, destinations: dict[str, AnyDestinationSettings]
    ) -> dict[str, AnyDestinationSettings]:
        for name in destinations:
            if not name or len(name) > 64:
                raise ValueError(f"destination name {name!r} must have 1 to 64 characters")
        return destinations

    @field_validator("rules")
    @classmethod
    def _rules_form_a_set(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        return check_rule_set(rules)

    @model_validator(mode="after")
    def _peers_not_also_allowed_anywhere(self) -> "Settings":
        """A peer's AE title in ``allowed_calling_aets`` too would be accepted from anywhere."""
        anywhere = set(self.allowed_calling_aets)
        for name, peer in self.peers.items():
            if peer.ae_title in anywhere:
                raise _error_at(
                    ("peers", name),
                    f"AE title {peer.ae_title!r} is also in allowed_calling_aets, "
                    "which accepts it from any address; list it in one place",
                    peer.model_dump(mode="json"),
                )
        return self

    @model_validator(mode="after")
    def _rules_name_configured_destinations(self) -> "Settings":
        for rule in self.rules:
            unknown = [name for name in rule.destinations if name not in self.destinations]
            if unknown:
                configured = ", ".join(sorted(self.destinations)) or "none"
                raise _error_at(
                    ("rules",),
                    f"rule {rule.name!r} names destination {unknown[0]!r}, which is not "
                    f"configured (configured: {configured})",
                    rule.name,
                )
        return self

    @model_validator(mode="after")
    def _open_port_names_its_peers(self) -> "Settings":
        """DICOM on every interface with no allow-list accepts anyone who reaches the port."""
        open_to_all = listens_everywhere(self.bind_address) and not self.restricts_peers
        if open_to_all and not self.accept_any_peer:
            raise ValueError(
                f"bind_address {self.bind_address} listens on every interface and neither "
                "peers nor allowed_calling_aets is set, so any machine could store images: "
                "list the senders under peers (or allowed_calling_aets), bind one address "
                "(e.g. bind_address: 127.0.0.1), or set accept_any_peer: true"
            )
        return self

    @property
    def restricts_peers(self) -> bool:
        """Whether ``peers`` or ``allowed_calling_aets`` limits who may associate."""
        return bool(self.peers or self.allowed_calling_aets)

    @property
    def resolved_database_url(self) -> str:
        """``database_url``, or the SQLite journal inside ``storage_dir``."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{(self.storage_dir / 'journal.sqlite').resolve()}"

    @property
    def resolved_models_dir(self) -> Path:
        """``models_dir``, or the ``models`` folder inside ``storage_dir``."""
        return self.models_dir if self.models_dir is not None else self.storage_dir / "models"

    def result_options(self) -> ResultOptions:
        """The :class:`ResultOptions` the SEG and SR builders take."""
        return ResultOptions(**self.results.model_dump())
