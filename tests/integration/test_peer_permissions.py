"""Per-peer permissions on the Storage SCP: AE title, source address and service.

Real peers on loopback: pynetdicom SCUs bound to 127.0.0.1 or 127.0.0.2 (both
loopback on Linux, so "another host" is a real other source address) and
DCMTK's echoscu and storescu.
"""

import ipaddress
import re
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event

from cad_node.config import Settings, load_settings
from cad_node.errors import ConfigError
from cad_node.security.peers import ALL_SERVICES, Peer, PeerPolicy, PeerService
from tests.conftest import NodeFactory, dcmtk, pydicom_file
from tests.dcmtk import NODE_AE_TITLE, storescu

SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124
VERIFICATION = "1.2.840.10008.1.1"
CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
"""A-ASSOCIATE-RJ: rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized."""


def network(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


def peer(ae_title: str, addresses: str, *services: PeerService) -> Peer:
    return Peer(ae_title, (network(addresses),), frozenset(services or ALL_SERVICES))


def associate(port: int, ae_title: str, source: str = "127.0.0.1") -> Association:
    """An association with Verification and CT Image Storage, from ``source``."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title=NODE_AE_TITLE, bind_address=(source, 0))


def rejection_of(port: int, ae_title: str, source: str = "127.0.0.1") -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the node answers."""
    received: list[tuple[int, int, int]] = []

    def on_acse(event: Event) -> None:
        primitive = event.primitive  # type: ignore[attr-defined]
        if getattr(primitive, "result", None) not in (None, 0x00):
            received.append((primitive.result, primitive.result_source, primitive.diagnostic))

    ae = AE(ae_title=ae_title)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title=NODE_AE_TITLE,
        bind_address=(source, 0),
        evt_handlers=[(evt.EVT_ACSE_RECV, on_acse)],
    )
    assert assoc.is_rejected
    (answer,) = received
    return answer


def echo_and_store(assoc: Association) -> tuple[int, int]:
    """The C-ECHO and the C-STORE (pydicom's CT_small) statuses on ``assoc``, then release."""
    assert assoc.is_established
    try:
        echo = int(assoc.send_c_echo().Status)
        store = int(assoc.send_c_store(dcmread(pydicom_file("CT_small.dcm"))).Status)
        return echo, store
    finally:
        assoc.release()


def test_a_peer_is_accepted_only_from_its_addresses(make_node: NodeFactory) -> None:
    node = make_node(peers=PeerPolicy([peer("PACS", "127.0.0.2/32")]))

    assert rejection_of(node.port, "PACS", source="127.0.0.1") == CALLING_AE_NOT_RECOGNIZED
    assert echo_and_store(associate(node.port, "PACS", source="127.0.0.2")) == (SUCCESS, SUCCESS)
    assert node.instance_count() == 1


def test_an_unknown_calling_ae_is_rejected_even_from_a_known_address(
    make_node: NodeFactory,
) -> None:
    node = make_node(peers=PeerPolicy([peer("PACS", "127.0.0.0/8")]))

    assert rejection_of(node.port, "INTRUDER") == CALLING_AE_NOT_RECOGNIZED
    result = storescu(node.port, [pydicom_file("CT_small.dcm")], calling_ae="INTRUDER")

    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr + result.stdout
    assert node.instance_count() == 0


def test_an_echo_only_peer_gets_0124_for_c_store_and_nothing_is_stored(
    make_node: NodeFactory,
) -> None:
    node = make_node(peers=PeerPolicy([peer("MONITOR", "127.0.0.1/32", PeerService.ECHO)]))

    statuses = echo_and_store(associate(node.port, "MONITOR"))
    result = storescu(node.port, [pydicom_file("CT_small.dcm")], calling_ae="MONITOR")

    assert statuses == (SUCCESS, NOT_AUTHORIZED)
    assert result.returncode != 0 or "0x0124" in result.stderr + result.stdout
    assert node.instance_count() == 0
    assert node.spool_files() == []


def test_a_store_only_peer_gets_0124_for_c_echo(make_node: NodeFactory) -> None:
    node = make_node(peers=PeerPolicy([peer("SCANNER", "127.0.0.1/32", PeerService.STORE)]))

    statuses = echo_and_store(associate(node.port, "SCANNER"))
    echoscu = dcmtk(
        "echoscu", "-v", "-aet", "SCANNER", "-aec", NODE_AE_TITLE, "127.0.0.1", str(node.port)
    )

    assert statuses == (NOT_AUTHORIZED, SUCCESS)
    # DCMTK names no C-ECHO status 0x0124 (PS3.7 Annex C lists it), so it prints "Unknown Status".
    assert re.search(r"Echo Response \(.*0x0?124\)", echoscu.stdout + echoscu.stderr)
    assert node.instance_count() == 1


def test_one_title_may_have_two_entries_with_different_rights(make_node: NodeFactory) -> None:
    node = make_node(
        peers=PeerPolicy(
            [
                peer("PACS", "127.0.0.1/32", PeerService.ECHO),
                peer("PACS", "127.0.0.2/32", PeerService.ECHO, PeerService.STORE),
            ]
        )
    )

    assert echo_and_store(associate(node.port, "PACS", "127.0.0.1")) == (SUCCESS, NOT_AUTHORIZED)
    assert echo_and_store(associate(node.port, "PACS", "127.0.0.2")) == (SUCCESS, SUCCESS)


def test_allowed_calling_aets_still_accepts_from_any_address(make_node: NodeFactory) -> None:
    node = make_node(allowed_calling_aets=["SCANNER"])

    assert echo_and_store(associate(node.port, "SCANNER", "127.0.0.2")) == (SUCCESS, SUCCESS)
    assert rejection_of(node.port, "INTRUDER") == CALLING_AE_NOT_RECOGNIZED


def test_settings_make_one_policy_of_peers_and_the_allow_list() -> None:
    settings = Settings.model_validate(
        {
            "allowed_calling_aets": ["LEGACY"],
            "peers": {
                "pacs": {"ae_title": "PACS", "addresses": ["10.2.0.15", "10.3.0.0/24"]},
                "scanner": {"ae_title": "CT1", "addresses": ["10.4.0.7"], "services": ["store"]},
            },
        }
    )
    policy = PeerPolicy.from_settings(settings)

    assert policy.permits("PACS", "10.3.0.200", PeerService.ECHO)
    assert policy.permits("PACS ", "::ffff:10.2.0.15", PeerService.STORE)
    assert not policy.accepts_association("PACS", "10.2.0.16")
    assert not policy.permits("CT1", "10.4.0.7", PeerService.ECHO)
    assert policy.permits("LEGACY", "192.0.2.1", PeerService.STORE)
    assert PeerPolicy().permits("ANYONE", "192.0.2.1", PeerService.STORE)


@pytest.mark.parametrize(
    ("peer_yaml", "message"),
    [
        ("{ae_title: PACS, addresses: [10.2.0.15/24]}", "addresses[0]: not an IP address or"),
        ("{ae_title: PACS, addresses: []}", "peers.pacs.addresses"),
        ("{ae_title: PACS, addresses: [10.2.0.15], services: [find]}", "peers.pacs.services[0]"),
        ("{ae_title: PACS, addresses: [10.2.0.15], services: []}", "peers.pacs.services"),
        ("{ae_title: LEGACY, addresses: [10.2.0.15]}", "also in allowed_calling_aets"),
        ("{ae_title: PACS, adresses: [10.2.0.15]}", "did you mean 'addresses'"),
    ],
)
def test_a_bad_peer_is_refused_at_start_up(tmp_path: Path, peer_yaml: str, message: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(f"allowed_calling_aets: [LEGACY]\npeers:\n  pacs: {peer_yaml}\n")

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(path)
