"""Typed node settings from one YAML file, validated at start-up.

Every model forbids unknown keys and is frozen. :func:`load_settings` turns any
problem into a :class:`~cad_node.errors.ConfigError` whose message names the file,
the key path and the line, e.g.
``config/node.yaml: destinations.pacs.port: Input should be a valid integer ...
(got 'abc') [line 31]``.

Relative paths: ``rules`` (when a path) is read relative to the config file;
``storage_dir`` and ``models_dir`` relative to the working directory, like any
command-line tool's paths.
"""

import difflib
import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from cad_node import NOT_FOR_CLINICAL_USE
from cad_node.assembly.completion import StudyGrouping
from cad_node.domain.states import ResultKind
from cad_node.errors import ConfigError
from cad_node.results.options import ResultOptions
from cad_node.routing.rules import TAG_PREFIX, Rule, check_rule_set

DEFAULT_CONFIG = "default_config.yaml"
"""The embedded defaults (package data), used when no ``--config`` is given."""

_AE_TITLE_MAX = 16
"""PS3.5 Table 6.2-1: an AE value is at most 16 characters."""
_LO_MAX = 64
"""PS3.5 Table 6.2-1: a Long String (LO) is at most 64 characters."""
_IS_MAX = 2**31 - 1


def check_ae_title(value: str) -> str:
    """``value`` stripped, if it is a valid AE title (PS3.5 Table 6.2-1), else ``ValueError``.

    1 to 16 characters of the default repertoire, no backslash and no control
    character; leading and trailing spaces are not significant.
    """
    stripped = value.strip(" ")
    if not 1 <= len(stripped) <= _AE_TITLE_MAX:
        raise ValueError(f"an AE title has 1 to 16 characters, got {len(stripped)}")
    bad = [ch for ch in stripped if ch == "\\" or not 0x20 <= ord(ch) < 0x7F]
    if bad:
        raise ValueError(
            f"an AE title may not contain {bad[0]!r} (backslash, control or non-ASCII)"
        )
    return stripped


AETitle = Annotated[str, AfterValidator(check_ae_title)]


def _check_long_string(value: str) -> str:
    if len(value) > _LO_MAX or "\\" in value:
        raise ValueError("must be a DICOM LO value: at most 64 characters, no backslash")
    return value


LongString = Annotated[str, AfterValidator(_check_long_string)]


def _check_not_for_clinical_use(value: str) -> str:
    if NOT_FOR_CLINICAL_USE not in value:
        raise ValueError(
            f"must contain {NOT_FOR_CLINICAL_USE!r}: viewers show it in the series list"
        )
    return value


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

    @field_validator("results")
    @classmethod
    def _some_results(cls, results: tuple[ResultKind, ...]) -> tuple[ResultKind, ...]:
        if not results:
            raise ValueError("name at least one result kind (seg, sr)")
        return tuple(dict.fromkeys(results))


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


class ResultSettings(_Settings):
    """What goes into every SEG and SR the node writes (see ResultOptions)."""

    seg_series_number: int = Field(default=9801, ge=1, le=_IS_MAX)
    sr_series_number: int = Field(default=9802, ge=1, le=_IS_MAX)
    seg_series_description: Annotated[LongString, AfterValidator(_check_not_for_clinical_use)] = (
        f"CAD {{model}} SEG {NOT_FOR_CLINICAL_USE}"
    )
    """``{model}`` is replaced by the name of the model that made the object."""
    sr_series_description: Annotated[LongString, AfterValidator(_check_not_for_clinical_use)] = (
        f"CAD {{model}} SR {NOT_FOR_CLINICAL_USE}"
    )
    overlay_series_number: int = Field(default=9803, ge=1, le=_IS_MAX)
    overlay_series_description: Annotated[
        LongString, AfterValidator(_check_not_for_clinical_use)
    ] = f"CAD {{model}} marks {NOT_FOR_CLINICAL_USE}"
    """The burned-in Secondary Capture series (result kind ``overlay``)."""
    explanation_series_number: int = Field(default=9804, ge=1, le=_IS_MAX)
    explanation_series_description: Annotated[
        LongString, AfterValidator(_check_not_for_clinical_use)
    ] = f"CAD {{model}} Grad-CAM {NOT_FOR_CLINICAL_USE}"
    """The Secondary Capture series of explanation maps (result kind ``explanation``)."""
    gsps_series_number: int = Field(default=9805, ge=1, le=_IS_MAX)
    gsps_series_description: Annotated[LongString, AfterValidator(_check_not_for_clinical_use)] = (
        f"CAD {{model}} marks PR {NOT_FOR_CLINICAL_USE}"
    )
    """The Softcopy Presentation State series (result kind ``gsps``)."""
    parametric_map_series_number: int = Field(default=9806, ge=1, le=_IS_MAX)
    parametric_map_series_description: Annotated[
        LongString, AfterValidator(_check_not_for_clinical_use)
    ] = f"CAD {{model}} heatmaps {NOT_FOR_CLINICAL_USE}"
    """The Parametric Map series of explanation maps (result kind ``parametric_map``)."""
    kos_series_number: int = Field(default=9807, ge=1, le=_IS_MAX)
    kos_series_description: Annotated[LongString, AfterValidator(_check_not_for_clinical_use)] = (
        f"CAD {{model}} key images {NOT_FOR_CLINICAL_USE}"
    )
    """The Key Object Selection series flagging the images with findings (result kind ``kos``)."""
    manufacturer: LongString = Field(default="cad-node project", min_length=1)
    manufacturer_model_name: LongString = Field(default="cad-node", min_length=1)
    device_serial_number: LongString = "cad-node-0"
    institution_name: LongString | None = None
    institutional_department_name: LongString | None = None

    @model_validator(mode="after")
    def _distinct_series_numbers(self) -> "ResultSettings":
        if self.seg_series_number == self.sr_series_number:
            raise ValueError("seg_series_number and sr_series_number must differ")
        numbers = (
            self.seg_series_number,
            self.sr_series_number,
            self.overlay_series_number,
            self.explanation_series_number,
            self.gsps_series_number,
            self.parametric_map_series_number,
            self.kos_series_number,
        )
        if len(set(numbers)) != len(numbers):
            raise ValueError(
                "seg, sr, overlay, explanation, gsps, parametric map and kos series numbers "
                "must all differ, "
                f"got {numbers}"
            )
        return self


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
    role: Literal["read", "admin"] = "read"

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
    study_groups: dict[Annotated[str, BeforeValidator(_upper)], StudyGrouping] = Field(
        default_factory=lambda: dict(DEFAULT_STUDY_GROUPS)
    )
    """Modalities whose series are read per study (four mammography views, both eyes)."""
    destinations: dict[str, DestinationSettings] = Field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
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
    decoding: DecodingSettings = DecodingSettings()
    limits: IngestLimitSettings = IngestLimitSettings()
    admin: AdminSettings = AdminSettings()
    health: HealthSettings = HealthSettings()
    retention: RetentionSettings = RetentionSettings()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    """CPU threads per torch operator; ``None``: torch's default (one per core)."""
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = (
        "INFO"
    )

    @field_validator("destinations")
    @classmethod
    def _destination_names(
        cls, destinations: dict[str, DestinationSettings]
    ) -> dict[str, DestinationSettings]:
        for name in destinations:
            if not name or len(name) > 64:
                raise ValueError(f"destination name {name!r} must have 1 to 64 characters")
        return destinations

    @field_validator("peers")
    @classmethod
    def _peers_not_also_allowed_anywhere(
        cls, peers: dict[str, PeerSettings], info: ValidationInfo
    ) -> dict[str, PeerSettings]:
        anywhere = set(info.data.get("allowed_calling_aets") or ())
        for name, peer in peers.items():
            if peer.ae_title in anywhere:
                raise ValueError(
                    f"peer {name!r}: AE title {peer.ae_title!r} is also in allowed_calling_aets, "
                    "which accepts it from any address; list it in one place"
                )
        return peers

    @field_validator("rules", mode="before")
    @classmethod
    def _rules_from_file(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str | Path):
            return value
        context = info.context if isinstance(info.context, Mapping) else {}
        base_dir = Path(context.get("base_dir", "."))
        return load_rules(base_dir / Path(value))

    @field_validator("rules")
    @classmethod
    def _rules_name_configured_destinations(
        cls, rules: tuple[Rule, ...], info: ValidationInfo
    ) -> tuple[Rule, ...]:
        check_rule_set(rules)
        destinations = info.data.get("destinations")
        if destinations is None:
            return rules  # destinations themselves are invalid: reported on their own
        for rule in rules:
            unknown = [name for name in rule.destinations if name not in destinations]
            if unknown:
                configured = ", ".join(sorted(destinations)) or "none"
                raise ValueError(
                    f"rule {rule.name!r} names destination {unknown[0]!r}, which is not "
                    f"configured (configured: {configured})"
                )
        return rules

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


# -- loading ---------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key written twice (PyYAML keeps the last silently)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is written twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def load_settings(path: Path | None) -> Settings:
    """The settings in the YAML file ``path``, or the embedded defaults when ``None``.

    Raises
    ------
    ConfigError
        The file is missing, is not YAML, or a key is invalid or unknown; the
        message names the file, the key path and the line.
    """
    if path is None:
        resource = resources.files("cad_node").joinpath(DEFAULT_CONFIG)
        with resources.as_file(resource) as default_path:
            return _load_settings_file(default_path, shown_as=f"<embedded {DEFAULT_CONFIG}>")
    return _load_settings_file(path, shown_as=str(path))


def _load_settings_file(path: Path, shown_as: str) -> Settings:
    text = _read_text(path, shown_as)
    data, root = _parse_yaml(text, shown_as)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{shown_as}: the top level must be a mapping of keys")
    try:
        return Settings.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, shown_as, root)) from exc


def load_rules(path: Path) -> tuple[Rule, ...]:
    """The rules in the YAML file ``path`` (a list of rules), checked.

    Raises
    ------
    ConfigError
        Naming the rules file, the rule's index and key path, and the line.
    """
    text = _read_text(path, str(path))
    data, root = _parse_yaml(text, str(path))
    return parse_rules([] if data is None else data, str(path), root)


_RULES = TypeAdapter(tuple[Rule, ...])


def parse_rules(
    data: object, source: str = "rules", root: yaml.Node | None = None
) -> tuple[Rule, ...]:
    """``data`` (a list of rule mappings, e.g. from YAML or JSON) as checked rules.

    Raises
    ------
    ConfigError
        A rule is invalid, or two rules share a name; ``source`` names the origin.
    """
    if not isinstance(data, list):
        raise ConfigError(f"{source}: rules must be a list of rules")
    try:
        return check_rule_set(_RULES.validate_python(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, root)) from exc
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def _read_text(path: Path, shown_as: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{shown_as}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{shown_as}: cannot read: {exc}") from exc


def _parse_yaml(text: str, shown_as: str) -> tuple[object, yaml.Node | None]:
    """The data and the node tree (for line numbers) of a YAML document."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        raise ConfigError(f"{shown_as}:{where} invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown_as}: invalid YAML: {exc}") from exc
    return data, root


# -- error messages ----------------------------------------------------------------------


def format_validation_error(
    exc: ValidationError, source: str, root: yaml.Node | None = None
) -> str:
    """One line per error: ``source: key.path: message (got value) [line N]``."""
    return "\n".join(_format_error(error, source, root) for error in exc.errors())


def _format_error(error: ErrorDetails, source: str, root: yaml.Node | None) -> str:
    loc = [part for part in error["loc"] if not str(part).startswith(TAG_PREFIX)]
    where = format_location(loc) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = f"{message}: {loc[-1]!r}{_suggestion(loc)}"
    elif _shows_input(error, loc):
        message = f"{message} (got {error.get('input')!r})"
    line = _line_of(root, loc)
    suffix = f" [line {line}]" if line is not None else ""
    return f"{source}: {where}: {message}{suffix}"


def _shows_input(error: ErrorDetails, loc: Sequence[int | str]) -> bool:
    # A whole list or mapping, a missing key or the rules list (a path, say) says nothing useful.
    value = error.get("input")
    scalar = not isinstance(value, dict | list | tuple)
    return error["type"] != "missing" and scalar and list(loc) != ["rules"]


def format_location(loc: Sequence[int | str]) -> str:
    """``("destinations", "pacs", "port")`` as ``destinations.pacs.port``; indexes as ``[0]``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _suggestion(loc: Sequence[int | str]) -> str:
    known = _known_keys(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


_NAMED_ITEMS: Mapping[str, type[BaseModel]] = {
    "destinations": DestinationSettings,
    "rules": Rule,
    "peers": PeerSettings,
}
"""Top-level keys whose values map a free name (or an index) to one model each."""


def _known_keys(parent: Sequence[int | str]) -> list[str]:
    """The keys allowed at ``parent`` (for "did you mean"); empty where keys are free."""
    model: type[BaseModel] = Settings
    parts = list(parent)
    while parts:
        part = str(parts.pop(0))
        if part in _NAMED_ITEMS and model is Settings:
            if not parts:
                return []
            parts.pop(0)
            model = _NAMED_ITEMS[part]
            continue
        field = model.model_fields.get(part)
        annotation = None if field is None else field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _line_of(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest key or item on ``loc`` found in the YAML node tree."""
    node, line = root, None
    for part in loc:
        child, key_line = (None, None) if node is None else _child(node, part)
        if child is None:
            break
        node = child
        line = key_line if key_line is not None else child.start_mark.line + 1
    return line


def _child(node: yaml.Node, part: int | str) -> tuple[yaml.Node | None, int | None]:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == str(part):
                return value_node, key_node.start_mark.line + 1
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        child: yaml.Node = node.value[part]
        return child, None
    return None, None
