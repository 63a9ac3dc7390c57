"""DICOMweb pieces without a network: the multipart reader, the STOW-RS answer's
classification (PS3.18 10.5.3), the destination settings and the endpoint's response module."""

from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom import Dataset

from cad_node.admin.dicomweb import _http_status, response_module
from cad_node.config import (
    DestinationSettings,
    DicomWebDestinationSettings,
    Settings,
    format_validation_error,
)
from cad_node.errors import ConfigError
from cad_node.export.outcomes import OutcomeKind
from cad_node.export.stow import StowAnswer, _Instance, classify_answer, read_answer
from cad_node.ingest.multipart import (
    MalformedMultipartError,
    MultipartReader,
    boundary_of,
    media_type_parameters,
)
from cad_node.ingest.stow import StowInstance

# -- the multipart reader ---------------------------------------------------------------------


class Parts:
    """A PartSink that keeps what it is given."""

    def __init__(self) -> None:
        self.headers: list[Mapping[str, str]] = []
        self.bodies: list[bytes] = []
        self.ended = 0

    def start_part(self, headers: Mapping[str, str]) -> None:
        self.headers.append(headers)
        self.bodies.append(b"")

    def part_data(self, data: bytes) -> None:
        self.bodies[-1] += data

    def end_part(self) -> None:
        self.ended += 1


BODY = (
    b"preamble to ignore\r\n--xyz\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--x"
    b"\r\n--xyz  \r\ncontent-type: application/dicom\r\nX-Folded: a\r\n b\r\n\r\n"
    b"\r\n--xy second\r\n--xyz--\r\nepilogue"
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, len(BODY)])
def test_parts_come_out_whole_however_the_body_is_chunked(chunk: int) -> None:
    parts = Parts()
    reader = MultipartReader(b"xyz", parts)
    for start in range(0, len(BODY), chunk):
        reader.feed(BODY[start : start + chunk])
    reader.close()

    assert parts.bodies == [b"first\r\n--x", b"\r\n--xy second"]
    assert parts.ended == 2
    assert parts.headers[1] == {"content-type": "application/dicom", "x-folded": "a b"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"--xyz\r\n\r\ndata", "inside part 1, without the closing delimiter --xyz--"),
        (b"no delimiter at all", "no delimiter --xyz in the body"),
        (b"--xyz junk\r\n\r\n", "text after delimiter 1"),
        (b"--xyz\r\nnot a header\r\n\r\n", "part 1: not a header line"),
        (b"--xyz\r\nA: \xff\r\n\r\n", "part 1: header lines are not ASCII"),
        (b"--xyz\r\n" + b"A: b\r\n" * 4000, "header lines over"),
    ],
)
def test_a_malformed_body_says_what_is_wrong(body: bytes, message: str) -> None:
    reader = MultipartReader(b"xyz", Parts())
    with pytest.raises(MalformedMultipartError, match=message):
        _feed_and_close(reader, body)


def _feed_and_close(reader: MultipartReader, body: bytes) -> None:
    reader.feed(body)
    reader.close()


def test_the_boundary_comes_from_the_content_type() -> None:
    media_type, parameters = media_type_parameters(
        'Multipart/Related; type="application/dicom"; boundary="a b"'
    )
    assert media_type == "multipart/related"
    assert parameters["type"] == "application/dicom"
    assert boundary_of(parameters) == b"a b"
    with pytest.raises(MalformedMultipartError, match="no boundary"):
        boundary_of({})
    with pytest.raises(MalformedMultipartError, match="1 to 70"):
        boundary_of({"boundary": "x" * 71})


# -- the STOW-RS answer ------------------------------------------------------------------------


def _instances(*uids: str) -> list[_Instance]:
    return [_Instance(Path(f"{uid}.dcm"), uid, Dataset()) for uid in uids]


def _item(uid: str, keyword: str | None = None, value: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    item.ReferencedSOPInstanceUID = uid
    if keyword is not None:
        setattr(item, keyword, value)
    return item


def test_an_answer_classifies_each_instance() -> None:
    response = Dataset()
    response.ReferencedSOPSequence = [_item("1.1"), _item("1.2", "WarningReason", 0xB000)]
    response.FailedSOPSequence = [
        _item("1.3", "FailureReason", 0xA700),
        _item("1.4", "FailureReason", 0xC000),
    ]

    outcomes = classify_answer(_instances("1.1", "1.2", "1.3", "1.4"), read_answer(202, response))

    kinds = [outcome.kind for outcome in outcomes]
    assert kinds == [OutcomeKind.SUCCESS, OutcomeKind.WARNING, OutcomeKind.RETRY, OutcomeKind.FAIL]
    assert outcomes[2].status == 0xA700
    assert "HTTP 202" in (outcomes[3].error or "")
    assert "0xC000" in (outcomes[3].error or "")


def test_an_instance_the_answer_leaves_out_is_stored_only_on_200() -> None:
    (on_200,) = classify_answer(_instances("1.1"), StowAnswer(200, {}, {}))
    (on_409,) = classify_answer(_instances("1.1"), StowAnswer(409, {}, {}))

    assert on_200.kind is OutcomeKind.SUCCESS
    assert on_409.kind is OutcomeKind.FAIL


# -- settings ------------------------------------------------------------------------------


def test_a_destination_without_type_is_c_store_and_dicomweb_takes_a_url() -> None:
    settings = Settings.model_validate(
        {
            "destinations": {
                "pacs": {"host": "10.0.0.5", "port": 104, "ae_title": "PACS"},
                "web": {"type": "dicomweb", "url": "https://pacs.example.org:8443/dicom-web/"},
            }
        }
    )

    assert isinstance(settings.destinations["pacs"], DestinationSettings)
    web = settings.destinations["web"]
    assert isinstance(web, DicomWebDestinationSettings)
    assert (web.url, web.host, web.port) == (
        "https://pacs.example.org:8443/dicom-web",
        "pacs.example.org",
        8443,
    )


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ({"type": "stow"}, "destinations.web: type must be dicomweb (STOW-RS)"),
        ({"type": "dicomweb", "url": "pacs.example.org/x"}, "destinations.web.url: "),
        (
            {"type": "dicomweb", "url": "http://p/x", "auth": {"type": "bearer"}},
            "destinations.web.auth: auth type bearer needs secret_file or secret_env",
        ),
        (
            {"type": "dicomweb", "url": "http://p/x", "auth": {"type": "basic", "secret_env": "X"}},
            "username goes with auth type basic",
        ),
        (
            {"type": "dicomweb", "url": "http://p/x", "ca_certificates": "/ca.pem"},
            "ca_certificates goes with an https URL",
        ),
    ],
)
def test_a_bad_dicomweb_destination_is_named(destination: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({"destinations": {"web": destination}})
    assert message in format_validation_error(caught.value, "node.yaml")


def test_the_secret_is_read_at_use_and_never_quoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "token"
    secret.write_text(" s3cret \n")
    web = DicomWebDestinationSettings.model_validate(
        {
            "type": "dicomweb",
            "url": "http://p/x",
            "auth": {"type": "bearer", "secret_file": str(secret)},
        }
    )
    assert web.auth.secret() == "s3cret"
    secret.write_text("")
    with pytest.raises(ConfigError, match="is empty") as caught:
        web.auth.secret()
    assert "s3cret" not in str(caught.value)
    by_env = web.auth.model_copy(update={"secret_file": None, "secret_env": "CAD_NODE_T"})
    monkeypatch.setenv("CAD_NODE_T", "from-env")
    assert by_env.secret() == "from-env"


# -- the endpoint's response --------------------------------------------------------------------


def test_the_response_module_lists_stored_and_failed_instances() -> None:
    stored = StowInstance("1.2.840.10008.5.1.4.1.1.2", "1.1", 0x0000)
    failed = StowInstance("1.2.840.10008.5.1.4.1.1.2", "1.2", 0xA700)

    module = response_module([stored, failed])
    answer = Dataset.from_json(module)

    assert [str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence] == ["1.1"]
    assert answer.FailedSOPSequence[0].FailureReason == 0xA700
    assert (_http_status([stored]), _http_status([stored, failed]), _http_status([failed])) == (
        200,
        202,
        409,
    )
