"""DICOMweb settings: STOW-RS destinations and the node's own STOW-RS endpoint (PS3.18).

A destination of ``type: dicomweb`` receives results by STOW-RS (PS3.18 10.5) at its
base URL; the ``dicomweb`` section bounds the node's ``POST /dicomweb/studies``.
The secret of a destination's authentication is read from a file or an environment
variable when it is used, so the configuration holds none and no log shows one.
"""

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cad_node.domain.states import ResultKind
from cad_node.errors import ConfigError


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DicomWebAuthSettings(_Settings):
    """How the node authenticates to a DICOMweb destination (HTTP Authorization header)."""

    type: Literal["none", "basic", "bearer"] = "none"
    username: str | None = Field(default=None, min_length=1, max_length=256)
    """``basic`` only: the user name."""
    secret_file: Path | None = None
    """A file holding the password (``basic``) or the token (``bearer``), readable by the
    node's user only; its surrounding white space is ignored."""
    secret_env: str | None = Field(default=None, min_length=1, max_length=256)
    """Or: an environment variable holding it."""

    @model_validator(mode="after")
    def _complete(self) -> "DicomWebAuthSettings":
        has_secret = self.secret_file is not None or self.secret_env is not None
        if self.secret_file is not None and self.secret_env is not None:
            raise ValueError("name the secret once: secret_file or secret_env")
        if self.type == "none" and (has_secret or self.username is not None):
            raise ValueError("auth type none takes no username or secret")
        if self.type != "none" and not has_secret:
            raise ValueError(f"auth type {self.type} needs secret_file or secret_env")
        if (self.type == "basic") != (self.username is not None):
            raise ValueError("username goes with auth type basic (and only with it)")
        return self

    def secret(self) -> str | None:
        """The password or token, read now; ``None`` for ``type: none``.

        Raises
        ------
        ConfigError
            The file is unreadable or empty, or the variable unset or empty (the
            message names the file or variable, never the secret).
        """
        if self.secret_file is not None:
            try:
                value = self.secret_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"auth: cannot read secret_file {self.secret_file}: {exc}"
                ) from exc
            where = f"secret_file {self.secret_file}"
        elif self.secret_env is not None:
            value = os.environ.get(self.secret_env, "").strip()
            where = f"environment variable {self.secret_env}"
        else:
            return None
        if not value:
            raise ConfigError(f"auth: {where} is empty or unset")
        return value


def check_base_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host and no query or fragment; else why not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{url!r} is not an http(s) URL with a host (e.g. https://pacs.example.org/dicom-web)"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{url!r}: no query, fragment or user name in the URL (use auth)")
    return url.rstrip("/")


class DicomWebDestinationSettings(_Settings):
    """A DICOMweb origin server that receives results by STOW-RS (PS3.18 10.5)."""

    type: Literal["dicomweb"]
    url: str = Field(min_length=8, max_length=2048)
    """The service's base URL, to which ``/studies`` is added: e.g. Orthanc's
    ``http://pacs:8042/dicom-web``."""
    auth: DicomWebAuthSettings = DicomWebAuthSettings()
    ca_certificates: Path | None = None
    """PEM CA bundle that signed an https server's certificate; ``None``: the system's.
    The certificate and host name are always verified."""
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Connecting, and waiting for the answer to one request."""
    results: tuple[ResultKind, ...] = (ResultKind.SEG, ResultKind.SR)
    """The kinds of result object this destination receives."""

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return check_base_url(url)

    @field_validator("results")
    @classmethod
    def _some_results(cls, results: tuple[ResultKind, ...]) -> tuple[ResultKind, ...]:
        if not results:
            raise ValueError("name at least one result kind (seg, sr)")
        return tuple(dict.fromkeys(results))

    @property
    def host(self) -> str:
        """The URL's host name or address."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The URL's port, else the scheme's (443 for https, 80 for http)."""
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @model_validator(mode="after")
    def _ca_for_https(self) -> "DicomWebDestinationSettings":
        if self.ca_certificates is not None and not self.url.startswith("https:"):
            raise ValueError("ca_certificates goes with an https URL")
        return self


class DicomWebSettings(_Settings):
    """The node's STOW-RS endpoint, ``POST /dicomweb/studies`` on the admin port (PS3.18 10.5).

    Each instance also obeys ``limits`` (``max_instance_bytes``, ``max_header_bytes``).
    """

    enabled: bool = True
    """Served to tokens of role ``send`` (or ``admin``) when the admin API is enabled."""
    max_request_bytes: int = Field(default=4 << 30, ge=1 << 20)
    """Largest STOW-RS request body; a larger one is answered 413 and nothing is stored."""
    max_instances: int = Field(default=1000, ge=1, le=100_000)
    """Most instances (parts) in one request; more: 413, nothing stored. Each holds a spool
    file open until the request has arrived."""
