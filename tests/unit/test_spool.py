"""The spool writes atomically, under UID-derived paths, and reports disk trouble with its errno."""

import errno
from pathlib import Path

import pytest

from cad_node.errors import StorageError
from cad_node.ingest.spool import Spool, SpoolWriteError, is_safe_uid, relative_instance_path

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
SOP = "1.2.826.0.1.3680043.8.498.3"


def test_write_places_the_file_under_its_uids(tmp_storage: Path) -> None:
    spool = Spool(tmp_storage)

    relative = spool.write(STUDY, SERIES, SOP, b"DICM bytes")

    assert relative == Path("spool", STUDY, SERIES, SOP + ".dcm")
    assert (tmp_storage / relative).read_bytes() == b"DICM bytes"
    assert list(spool.temp_files()) == []
    assert list(spool.instance_files()) == [relative]


def test_a_resend_replaces_the_file_by_rename(tmp_storage: Path) -> None:
    spool = Spool(tmp_storage)
    first = spool.write(STUDY, SERIES, SOP, b"first version")
    first_inode = (tmp_storage / first).stat().st_ino

    second = spool.write(STUDY, SERIES, SOP, b"second")

    assert second == first
    assert (tmp_storage / second).read_bytes() == b"second"
    # A new inode: the old file was replaced whole, never rewritten in place.
    assert (tmp_storage / second).stat().st_ino != first_inode


@pytest.mark.parametrize(
    "uid", ["", "..", "../1.2", "1.2/3", "1.2.abc", "1..2", ".1.2", "1.2.", "1" * 65, "1.2 "]
)
def test_unsafe_uids_never_become_paths(tmp_storage: Path, uid: str) -> None:
    assert not is_safe_uid(uid)
    with pytest.raises(ValueError, match="not a valid UID"):
        Spool(tmp_storage).write(STUDY, uid, SOP, b"x")
    assert not (tmp_storage / "spool" / STUDY).exists()


def test_a_64_character_uid_is_accepted() -> None:
    uid = "1." + "2" * 62
    assert relative_instance_path(STUDY, SERIES, uid).name == uid + ".dcm"


def test_a_blocked_path_is_a_storage_error_with_errno(tmp_storage: Path) -> None:
    spool = Spool(tmp_storage)
    (tmp_storage / "spool").mkdir()
    (tmp_storage / "spool" / STUDY).write_bytes(b"a file where a directory belongs")

    with pytest.raises(SpoolWriteError) as caught:
        spool.write(STUDY, SERIES, SOP, b"data")

    assert isinstance(caught.value, StorageError)
    assert caught.value.errno == errno.ENOTDIR
    assert list(spool.temp_files()) == []


def test_a_failed_rename_leaves_no_temp_file(tmp_storage: Path) -> None:
    spool = Spool(tmp_storage)
    target = tmp_storage / relative_instance_path(STUDY, SERIES, SOP)
    target.mkdir(parents=True)  # a directory where the file should go: rename fails
    (target / "keep").write_bytes(b"")

    with pytest.raises(SpoolWriteError) as caught:
        spool.write(STUDY, SERIES, SOP, b"data")

    assert caught.value.errno in {errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST}
    assert list(spool.temp_files()) == []


def test_a_directory_removed_meanwhile_is_made_again(tmp_storage: Path) -> None:
    spool = Spool(tmp_storage)
    first = spool.write(STUDY, SERIES, SOP, b"one")
    (tmp_storage / first).unlink()
    (tmp_storage / first).parent.rmdir()  # e.g. a retention sweep

    assert (tmp_storage / spool.write(STUDY, SERIES, SOP, b"two")).read_bytes() == b"two"


def test_without_fsync_the_write_is_still_atomic(tmp_storage: Path) -> None:
    spool = Spool(tmp_storage, fsync=False)

    relative = spool.write(STUDY, SERIES, SOP, b"fast")

    assert (tmp_storage / relative).read_bytes() == b"fast"
    assert list(spool.temp_files()) == []


def test_a_file_written_in_parts_is_their_concatenation(tmp_storage: Path) -> None:
    data_set = bytearray(range(256)) * 4096  # 1 MiB, written from a view without a copy
    with memoryview(data_set) as view:
        relative = Spool(tmp_storage).write(STUDY, SERIES, SOP, (b"header", view[10:]))

    assert (tmp_storage / relative).read_bytes() == b"header" + bytes(data_set[10:])


def test_a_spool_file_written_as_it_arrives_is_placed_on_commit(tmp_storage: Path) -> None:
    spool = Spool(tmp_storage)
    arriving = spool.open_file()
    arriving.write([b"file header, "])
    arriving.write([b"first fragment, ", memoryview(b"second fragment")])
    (temp_file,) = spool.temp_files()

    relative = arriving.commit(STUDY, SERIES, SOP)

    assert arriving.size == len(b"file header, first fragment, second fragment")
    assert (tmp_storage / relative).read_bytes() == b"file header, first fragment, second fragment"
    assert not temp_file.exists()
    assert list(spool.temp_files()) == []


def test_what_was_written_can_be_read_back_before_the_commit(tmp_storage: Path) -> None:
    arriving = Spool(tmp_storage).open_file()
    arriving.write([b"HEADER", b"data set bytes"])

    assert arriving.read(6) == b"data set bytes"


def test_a_discarded_spool_file_leaves_nothing(tmp_storage: Path) -> None:
    spool = Spool(tmp_storage)
    arriving = spool.open_file()
    arriving.write([b"half an instance"])

    arriving.discard()
    arriving.discard()  # idempotent: the end of an association may discard again

    assert list(spool.temp_files()) == []
    assert list(spool.instance_files()) == []
    with pytest.raises(ValueError, match="already committed or discarded"):
        arriving.write([b"more"])


def test_a_commit_under_an_unsafe_uid_places_nothing(tmp_storage: Path) -> None:
    spool = Spool(tmp_storage)
    arriving = spool.open_file()
    arriving.write([b"data"])

    with pytest.raises(ValueError, match="not a valid UID"):
        arriving.commit(STUDY, "../1.2", SOP)
    arriving.discard()

    assert list(spool.temp_files()) == []
    assert not (tmp_storage / "spool" / STUDY).exists()


def test_a_blocked_commit_removes_the_temp_file(tmp_storage: Path) -> None:
    spool = Spool(tmp_storage)
    (tmp_storage / "spool").mkdir()
    (tmp_storage / "spool" / STUDY).write_bytes(b"a file where a directory belongs")
    arriving = spool.open_file()
    arriving.write([b"data"])

    with pytest.raises(SpoolWriteError) as caught:
        arriving.commit(STUDY, SERIES, SOP)

    assert caught.value.errno == errno.ENOTDIR
    assert list(spool.temp_files()) == []


def test_temp_file_names_never_repeat_across_spools_of_one_process(tmp_storage: Path) -> None:
    first, second = Spool(tmp_storage).open_file(), Spool(tmp_storage).open_file()
    first.write([b"1"])
    second.write([b"2"])

    assert len(list(Spool(tmp_storage).temp_files())) == 2
    first.discard()
    second.discard()
