"""Who may associate with the node, from which addresses, and for which DIMSE services.

An AE title alone is trivially spoofed, so a configured peer (``peers:`` in the
node's YAML) names its AE title, the addresses or networks it connects from, and
the services it may use. The decision is made twice:

- at association (PS3.8 9.3.4): a calling AE title that no peer entry accepts
  from the connecting address is rejected: rejected-permanent, DICOM UL
  service-user, calling-AE-title-not-recognized;
- per DIMSE request: a peer that may not use a service is answered 0x0124
  "Refused: Not Authorized" (PS3.7 Annex C).

``allowed_calling_aets`` (the older, global list) still works: each title in it
is a peer accepted from any address for every service. With neither configured,
every peer is accepted, as before.
"""

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from cad_node.config import Settings

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PeerService(StrEnum):
    """A DIMSE service the node offers as an SCP (docs/conformance.md)."""

    ECHO = "echo"
    """C-ECHO, Verification SOP Class (PS3.4 Annex A)."""
    STORE = "store"
    """C-STORE, Storage Service Class (PS3.4 Annex B): sending images in."""


ALL_SERVICES = frozenset(PeerService)


@dataclass(frozen=True, slots=True)
class Peer:
    """One peer: an AE title, where it may connect from, and what it may do."""

    ae_title: str
    networks: tuple[IPNetwork, ...]
    """Addresses it may connect from; empty: any address."""
    services: frozenset[PeerService]

    def __post_init__(self) -> None:
        if not self.services:
            raise ValueError(f"peer {self.ae_title!r} may use no service")

    def accepts(self, ae_title: str, address: IPAddress | None) -> bool:
        """Whether an association from ``ae_title`` at ``address`` is this peer."""
        if ae_title != self.ae_title:
            return False
        if not self.networks:
            return True
        return address is not None and any(address in network for network in self.networks)


class PeerPolicy:
    """The peers the node accepts; an empty policy accepts anyone for every service."""

    def __init__(self, peers: Iterable[Peer] = ()) -> None:
        self._peers = tuple(peers)

    @classmethod
    def from_settings(cls, settings: Settings) -> "PeerPolicy":
        """``peers`` and ``allowed_calling_aets`` of the node's settings, as one policy."""
        peers = [
            Peer(
                ae_title=peer.ae_title,
                networks=peer.addresses,
                services=frozenset(PeerService(s) for s in peer.services),
            )
            for peer in settings.peers.values()
        ]
        return cls([*peers, *_any_address_peers(settings.allowed_calling_aets)])

    @classmethod
    def from_calling_aets(cls, ae_titles: Sequence[str]) -> "PeerPolicy":
        """The older allow-list: these titles from any address, every service."""
        return cls(_any_address_peers(ae_titles))

    @property
    def is_open(self) -> bool:
        """No peer configured: every association and service is accepted."""
        return not self._peers

    def accepts_association(self, ae_title: str, address: str) -> bool:
        """Whether a calling AE title connecting from ``address`` is a known peer."""
        return self.is_open or bool(self._matching(ae_title, address))

    def permits(self, ae_title: str, address: str, service: PeerService) -> bool:
        """Whether the peer at ``address`` calling as ``ae_title`` may use ``service``."""
        if self.is_open:
            return True
        return any(service in peer.services for peer in self._matching(ae_title, address))

    def _matching(self, ae_title: str, address: str) -> list[Peer]:
        title = ae_title.strip()
        parsed = parse_address(address)
        return [peer for peer in self._peers if peer.accepts(title, parsed)]


def _any_address_peers(ae_titles: Iterable[str]) -> list[Peer]:
    return [Peer(title.strip(), (), ALL_SERVICES) for title in ae_titles]


def parse_address(address: str) -> IPAddress | None:
    """The peer's IP address; an IPv4-mapped IPv6 address as its IPv4 form; None if not an IP."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed
