"""The backup file format (storage/backup_file.py): layout, and refusing every kind of damage."""

from __future__ import annotations

import hashlib
import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.errors import CorruptSnapshot, StorageError
from quorumkv.storage.backup_file import (
    DIGEST_SIZE,
    MAGIC,
    PREFIX,
    VERSION,
    BackupChecker,
    BackupHeader,
    check_file,
    parse_header,
    read_header,
)

IMAGE = bytes(range(256)) * 3


def header(image: bytes = IMAGE, **kw: object) -> BackupHeader:
    fields: dict[str, object] = dict(cluster_id=(1 << 63) + 5, member="n1", applied_index=1234,
                                     applied_term=7, revision=999, compact_revision=10,
                                     key_count=42, image_size=len(image),
                                     created_ns=1_700_000_000_123_456_789)
    fields.update(kw)
    return BackupHeader(**fields)  # type: ignore[arg-type]


def backup(image: bytes = IMAGE, **kw: object) -> bytes:
    """Built from the layout the module documents, not from the module's own writer."""
    body = header(image, **kw).encode() + image
    return body + hashlib.sha256(body).digest()


def check(data: bytes, pieces: list[int] | None = None) -> tuple[BackupChecker, bytes]:
    """Feed ``data`` in pieces cut at ``pieces``; the checker and the image bytes it passed."""
    checker = BackupChecker("test.db")
    image = bytearray()
    cuts = [0, *sorted(set(pieces or [])), len(data)]
    for lo, hi in itertools.pairwise(cuts):
        image += checker.update(data[lo:hi])
    return checker, bytes(image)


def test_the_layout_is_the_documented_one() -> None:
    h = header()
    data = backup()
    assert data[:8] == MAGIC == b"QKV-BKUP"
    _, version, fields_len = PREFIX.unpack_from(data)
    assert (version, fields_len) == (VERSION, 8 * 8 + 2 + len("n1"))
    assert struct.unpack_from(">QQQQQQQQH", data, PREFIX.size) == (
        h.cluster_id, 1234, 7, 999, 10, 42, len(IMAGE), h.created_ns, 2)
    assert data[h.header_size:h.header_size + len(IMAGE)] == IMAGE
    assert len(data) == h.file_size == h.header_size + len(IMAGE) + DIGEST_SIZE
    assert data[-DIGEST_SIZE:] == hashlib.sha256(data[:-DIGEST_SIZE]).digest()


def test_a_whole_backup_checks_and_hands_back_its_image() -> None:
    data = backup()
    checker, image = check(data)
    info = checker.finish()
    assert info.header == header() and image == IMAGE
    assert info.file_size == len(data)
    assert info.sha256 == hashlib.sha256(data[:-DIGEST_SIZE]).hexdigest()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(backup()) - 1), max_size=12),
       st.text(min_size=0, max_size=40))
def test_any_split_into_pieces_gives_the_same_result(cuts: list[int], member: str) -> None:
    data = backup(member=member)
    checker, image = check(data, [c for c in cuts if c < len(data)])
    assert image == IMAGE
    assert checker.finish().header == header(member=member)


def test_an_empty_image_and_a_long_member_name() -> None:
    data = backup(b"", member="ü" * 300)
    checker, image = check(data, [3, 17])
    assert image == b"" and checker.finish().header.member == "ü" * 300


def test_every_flipped_bit_is_refused() -> None:
    data = backup(IMAGE[:64])
    for position in range(len(data)):
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[position] ^= bit
            with pytest.raises(CorruptSnapshot):
                check(bytes(damaged))[0].finish()


def test_every_truncation_is_refused() -> None:
    data = backup(IMAGE[:64])
    for size in range(len(data)):
        with pytest.raises(CorruptSnapshot, match=r"truncated|empty"):
            check(data[:size])[0].finish()


def test_bytes_beyond_the_digest_are_refused() -> None:
    with pytest.raises(CorruptSnapshot, match="bytes more than its header"):
        check(backup() + b"\x00")[0].finish()


def test_a_changed_image_with_its_old_digest_is_a_checksum_mismatch() -> None:
    data = bytearray(backup())
    data[header().header_size + 5] ^= 0xFF
    with pytest.raises(CorruptSnapshot, match=r"checksum mismatch in test\.db"):
        check(bytes(data))[0].finish()


@pytest.mark.parametrize(("data", "message"), [
    (b"PK\x03\x04 a zip file, not a backup", "not a quorumkv backup file"),
    (b"QKV-SNAP" + bytes(100), "not a quorumkv backup file"),
    (b"Q", "truncated"),
    (PREFIX.pack(MAGIC, 2, 66) + bytes(200), "format version 2"),
    (PREFIX.pack(MAGIC, VERSION, 3) + bytes(200), "header of backup test.db is damaged"),
    (PREFIX.pack(MAGIC, VERSION, 1 << 30), "header of backup test.db is damaged"),
    (PREFIX.pack(MAGIC, VERSION, 8 * 8 + 2 + 2) + bytes(64) + b"\x00\x05ab",
     "header of backup test.db is damaged"),
    (PREFIX.pack(MAGIC, VERSION, 8 * 8 + 2 + 2) + bytes(64) + b"\x00\x02\xff\xfe",
     "not UTF-8"),
])
def test_foreign_and_damaged_headers_are_named(data: bytes, message: str) -> None:
    with pytest.raises(CorruptSnapshot, match=message):
        check(data)[0].finish()


def test_fields_that_do_not_fit_are_refused_when_writing() -> None:
    with pytest.raises(ValueError, match="out of range"):
        header(revision=1 << 64).encode()
    with pytest.raises(ValueError, match="out of range"):
        header(member="x" * 70_000).encode()


def test_parse_header_waits_for_enough_bytes() -> None:
    data = backup()
    h = header()
    for size in (0, 4, PREFIX.size, h.header_size - 1):
        assert parse_header(data[:size], "test.db") is None
    assert parse_header(data[:h.header_size], "test.db") == h


def test_files_are_checked_whole_and_refused_with_their_name(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    good.write_bytes(backup())
    assert check_file(good).header == header()
    assert read_header(good) == (header(), len(backup()))
    short = tmp_path / "short.db"
    short.write_bytes(backup()[:-1])
    with pytest.raises(CorruptSnapshot, match=f"{short} is truncated: its header promises"):
        read_header(short)
    with pytest.raises(CorruptSnapshot, match="is truncated"):
        check_file(short)
    flipped = bytearray(backup())
    flipped[-40] ^= 1
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(flipped))
    read_header(bad)  # the header alone cannot tell
    with pytest.raises(CorruptSnapshot, match=f"checksum mismatch in {bad}") as caught:
        check_file(bad)
    assert caught.value.path == str(bad)
    with pytest.raises(StorageError, match="cannot read backup"):
        check_file(tmp_path / "missing.db")
    with pytest.raises(StorageError, match="cannot read backup"):
        check_file(tmp_path)
