"""IDX files written by the tests and read back: round trips, and every malformed file rejected
with a MnistlabError that names the file."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mnistlab import idx
from mnistlab.errors import MnistlabError

IMAGES = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
LABELS = np.array([7, 2, 1], dtype=np.uint8)


def _write(path: Path, content: bytes) -> Path:
    """Write ``content`` to ``path``, gzip-compressed when the name ends in .gz."""
    path.write_bytes(gzip.compress(content, mtime=0) if path.name.endswith(".gz") else content)
    return path


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_round_trip_images(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    idx.write_idx(path, IMAGES)
    back = idx.read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (3, 28, 28)
    np.testing.assert_array_equal(back, IMAGES)
    assert path.read_bytes()[:2] == (idx.GZIP_MAGIC if name.endswith(".gz") else b"\x00\x00")


def test_encoded_header_is_the_documented_layout() -> None:
    content = idx.encode_idx(LABELS)
    assert content == bytes([0, 0, 0x08, 1]) + struct.pack(">I", 3) + bytes([7, 2, 1])
    content = idx.encode_idx(IMAGES)
    assert content[:16] == bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 3, 28, 28)
    assert len(content) == 16 + IMAGES.size


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip_every_type_code(tmp_path: Path, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    path = tmp_path / "x.gz"
    idx.write_idx(path, array)
    back = idx.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_parse_idx_of_uint8_is_a_view_without_copy() -> None:
    content = idx.encode_idx(IMAGES)
    array = idx.parse_idx(content)
    assert not array.flags.owndata and not array.flags.writeable


def test_write_idx_rejects_unsupported_arrays(tmp_path: Path) -> None:
    with pytest.raises(MnistlabError, match="dtype"):
        idx.write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint64))
    with pytest.raises(MnistlabError, match="5-D"):
        idx.write_idx(tmp_path / "x", np.zeros((1, 1, 1, 1, 1), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_write_idx_is_atomic_and_leaves_no_part_file(tmp_path: Path) -> None:
    idx.write_idx(tmp_path / "labels.gz", LABELS)
    assert [p.name for p in tmp_path.iterdir()] == ["labels.gz"]


# ---------------------------------------------------------------- malformed files
def _malformed() -> dict[str, tuple[bytes, str]]:
    """Case -> (uncompressed content, what the error message must say)."""
    good = idx.encode_idx(IMAGES)
    return {
        "wrong magic (idx3 of int64 type code)": (b"\x00\x00\x07\x03" + good[4:], "bad IDX magic"),
        "wrong magic (first byte)": (b"\x01" + good[1:], "bad IDX magic"),
        "wrong magic (0 dimensions)": (b"\x00\x00\x08\x00" + good[4:], "bad IDX magic"),
        "wrong magic (gzip magic twice)": (b"PK\x03\x04" + good[4:], "bad IDX magic"),
        "truncated payload": (good[:-1], "truncated"),
        "truncated header": (good[:10], "truncated header"),
        "empty file": (b"", "too short"),
        "trailing bytes": (good + b"\x00", "trailing bytes"),
        "dimension says more images": (good[:4] + struct.pack(">I", 4) + good[8:], "truncated"),
    }


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", list(_malformed()))
def test_malformed_file_names_the_file(tmp_path: Path, case: str, gz: bool) -> None:
    content, expected = _malformed()[case]
    path = _write(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")), content)
    with pytest.raises(MnistlabError, match=expected) as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", [1, 5, 11, 100, 1000])
def test_truncated_gzip_stream_names_the_file(tmp_path: Path, cut: int) -> None:
    compressed = gzip.compress(idx.encode_idx(IMAGES), mtime=0)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(compressed[:-cut])
    with pytest.raises(MnistlabError, match="truncated|corrupt|too short") as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip_crc_is_rejected(tmp_path: Path) -> None:
    compressed = bytearray(gzip.compress(idx.encode_idx(IMAGES), mtime=0))
    compressed[-8] ^= 0xFF  # the CRC-32 of the content
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(MnistlabError, match="corrupt gzip") as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


def test_data_after_the_gzip_stream_is_rejected(tmp_path: Path) -> None:
    content = idx.encode_idx(LABELS)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(content, mtime=0) + gzip.compress(b"\x09", mtime=0))
    with pytest.raises(MnistlabError, match="trailing") as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cuts", [(0, 2), (0, 8), (0, 100), (0, 0, 50, 50), (0, 16, 1000, 2000)], ids=str)
def test_multi_member_gzip_is_read_as_gzip_reads_it(tmp_path: Path, cuts: tuple[int, ...]) -> None:
    content = idx.encode_idx(IMAGES)
    cuts = (*cuts, len(content))
    raw = b"".join(gzip.compress(content[a:b], mtime=0) for a, b in zip(cuts, cuts[1:]))
    assert gzip.decompress(raw) == content  # the oracle: Python's gzip module
    path = tmp_path / "x.gz"
    path.write_bytes(raw)
    np.testing.assert_array_equal(idx.read_idx(path), IMAGES)
    path.write_bytes(raw[:-1])  # a cut-off last member is still truncated
    with pytest.raises(MnistlabError, match="truncated|corrupt"):
        idx.read_idx(path)


def test_multi_member_gzip_with_zero_padding_between_members(tmp_path: Path) -> None:
    content = idx.encode_idx(LABELS)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(content[:5]) + bytes(7) + gzip.compress(content[5:]) + bytes(3))
    np.testing.assert_array_equal(idx.read_idx(path), LABELS)


def test_multi_member_gzip_with_more_content_than_the_header_is_rejected(tmp_path: Path) -> None:
    content = idx.encode_idx(LABELS)
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(content[:5]) + gzip.compress(content[5:] + b"\x01"))
    with pytest.raises(MnistlabError, match="trailing bytes beyond header shape"):
        idx.read_idx(path)
    path.write_bytes(gzip.compress(content[:5]) + gzip.compress(content[5:]) + b"junk")
    with pytest.raises(MnistlabError, match="corrupt gzip") as info:
        idx.read_idx(path)
    assert str(path) in str(info.value)


def test_many_member_gzip_bomb_stops_at_the_declared_size() -> None:
    header = idx.encode_idx(np.zeros((1, 28, 28), dtype=np.uint8))
    member = gzip.compress(bytes(1 << 20), compresslevel=1)
    tracemalloc.start()
    try:
        with pytest.raises(MnistlabError, match="trailing bytes"):
            idx.gunzip_bounded(gzip.compress(header) + member * 20, "bomb.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_gzip_zero_padding_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx.encode_idx(LABELS), mtime=0) + bytes(16))
    np.testing.assert_array_equal(idx.read_idx(path), LABELS)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(MnistlabError, match="cannot read") as info:
        idx.read_idx(tmp_path / "nope.gz")
    assert "nope.gz" in str(info.value)


def test_gigantic_header_is_rejected_before_allocating() -> None:
    forged = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 0xFFFFFFFF, 0xFFFFFFFF, 28)
    tracemalloc.start()
    try:
        with pytest.raises(MnistlabError, match="1 GiB"):
            idx.parse_idx(forged, "forged")
        with pytest.raises(MnistlabError, match="1 GiB"):
            idx.gunzip_bounded(gzip.compress(forged + bytes(1000)), "forged.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_header_whose_shape_product_overflows_int64_is_rejected() -> None:
    forged = bytes([0, 0, 0x08, 4]) + struct.pack(">4I", 1 << 16, 1 << 16, 1 << 16, 1 << 16)
    with pytest.raises(MnistlabError, match="1 GiB"):
        idx.parse_idx(forged, "forged")


def test_an_empty_header_whose_other_dimensions_overflow_is_one_line() -> None:
    """Found by the fuzzer: 0 x 2**21 x 2**21 x 2**21 declares no bytes, but NumPy cannot make that
    shape, so it used to raise its own ValueError; an empty split of real images still parses."""
    forged = bytes([0, 0, 0x08, 4]) + struct.pack(">4I", 0, 1 << 21, 1 << 21, 1 << 21)
    with pytest.raises(MnistlabError, match=r"forged: header claims shape \(0, 2097152, 2097152, 2097152\) "
                                            r"\(0 bytes, 9223372036854775808 without its empty dimensions\), over"):
        idx.parse_idx(forged, "forged")
    empty = idx.parse_idx(idx.encode_idx(np.zeros((0, 28, 28), dtype=np.uint8)), "empty")
    assert empty.shape == (0, 28, 28)


def test_gzip_bomb_stops_at_the_declared_size() -> None:
    header = idx.encode_idx(np.zeros((1, 28, 28), dtype=np.uint8))
    bomb = gzip.compress(header + bytes(20 << 20), compresslevel=1)  # 20 MiB of zeros after one image
    tracemalloc.start()
    try:
        with pytest.raises(MnistlabError, match="trailing bytes"):
            idx.gunzip_bounded(bomb, "bomb.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_decompressed_bytes_passes_raw_content_through() -> None:
    content = idx.encode_idx(LABELS)
    assert idx.decompressed_bytes(content) is content
    assert idx.decompressed_bytes(gzip.compress(content, compresslevel=1)) == content
    assert idx.decompressed_bytes(gzip.compress(content, compresslevel=9)) == content
