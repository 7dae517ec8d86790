"""Fuzzing the IDX reader: random bytes and mutated valid files (raw and gzip) either parse into a
consistent array or raise MnistlabError; never another exception, a hang, or a huge allocation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnistlab import idx
from mnistlab.errors import MnistlabError

FUZZ = settings(max_examples=150, deadline=500, suppress_health_check=[HealthCheck.function_scoped_fixture])
pytestmark = pytest.mark.timeout(60)
VALID = idx.encode_idx(np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3))  # 16-byte header + 30
VALID_GZ = gzip.compress(VALID, mtime=0)


def _check_raw(content: bytes) -> None:
    """parse_idx on ``content``: a consistent array, or a MnistlabError naming the input."""
    try:
        array = idx.parse_idx(content, "fuzz.idx")
    except MnistlabError as exc:
        assert "fuzz.idx" in str(exc)
        return
    ndim = content[3]
    header = idx.MAGIC_BYTES + idx.DIM_BYTES * ndim
    assert array.shape == struct.unpack(f">{ndim}I", content[idx.MAGIC_BYTES:header])
    assert array.size * array.dtype.itemsize == len(content) - header
    assert array.dtype == idx.TYPE_CODES[content[2]].newbyteorder("=")


def _check_gz(raw: bytes) -> None:
    """gunzip_bounded on ``raw``: a complete IDX content, or a MnistlabError naming the input."""
    try:
        content = idx.gunzip_bounded(raw, "fuzz.gz")
    except MnistlabError as exc:
        assert "fuzz.gz" in str(exc)
        return
    _check_raw(content)  # what gunzip_bounded accepts has exactly its header's length
    idx.parse_idx(content, "fuzz.gz")


def _check_file(path: Path) -> None:
    """read_idx on ``path``: an array, or a MnistlabError naming the file."""
    try:
        array = idx.read_idx(path)
    except MnistlabError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(array, np.ndarray)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(content: bytes) -> None:
    _check_raw(content)
    _check_gz(content)
    _check_gz(b"\x1f\x8b" + content)


@FUZZ
@given(st.binary(max_size=60))
def test_random_bytes_gzip_compressed(content: bytes) -> None:
    _check_gz(gzip.compress(content, mtime=0))


@FUZZ
@given(
    type_code=st.sampled_from([*idx.TYPE_CODES, 0x00, 0x0A, 0xFF]),
    dims=st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), min_size=0, max_size=6),
    payload=st.binary(max_size=100),
    gz=st.booleans(),
)
def test_random_headers(type_code: int, dims: list[int], payload: bytes, gz: bool) -> None:
    content = bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload
    if gz:
        _check_gz(gzip.compress(content, compresslevel=1, mtime=0))
    else:
        _check_raw(content)


@FUZZ
@given(position=st.integers(0, len(VALID) - 1), value=st.integers(0, 255), gz=st.booleans())
def test_one_byte_changed(position: int, value: int, gz: bool) -> None:
    content = bytearray(VALID)
    content[position] = value
    if gz:
        _check_gz(gzip.compress(bytes(content), mtime=0))
    else:
        _check_raw(bytes(content))


@FUZZ
@given(position=st.integers(0, len(VALID_GZ) - 1), bit=st.integers(0, 7))
def test_one_bit_flipped_in_the_gzip_stream(position: int, bit: int) -> None:
    raw = bytearray(VALID_GZ)
    raw[position] ^= 1 << bit
    _check_gz(bytes(raw))


@FUZZ
@given(st.binary(min_size=1, max_size=40), st.booleans())
def test_bytes_appended(extra: bytes, gz: bool) -> None:
    if gz:
        _check_gz(VALID_GZ + extra)
    else:
        with pytest.raises(MnistlabError, match="trailing bytes"):
            idx.parse_idx(VALID + extra, "fuzz.idx")


def test_every_cut_of_a_valid_file(tmp_path: Path) -> None:
    for name, whole in (("x-idx3-ubyte", VALID), ("x-idx3-ubyte.gz", VALID_GZ)):
        path = tmp_path / name
        for length in range(len(whole)):
            path.write_bytes(whole[:length])
            with pytest.raises(MnistlabError) as info:
                idx.read_idx(path)
            assert str(path) in str(info.value), (name, length)
        path.write_bytes(whole)
        assert idx.read_idx(path).shape == (2, 5, 3)


@settings(max_examples=30, deadline=2000)
@given(dims=st.lists(st.integers(2**16, 2**32 - 1), min_size=2, max_size=4), type_code=st.sampled_from(list(idx.TYPE_CODES)))
def test_gigantic_forged_shapes_are_rejected_by_the_size_check(dims: list[int], type_code: int) -> None:
    content = bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + bytes(64)
    for call in (lambda: idx.parse_idx(content, "f"), lambda: idx.gunzip_bounded(gzip.compress(content), "f")):
        with pytest.raises(MnistlabError, match="over the 1 GiB limit"):
            call()


@FUZZ
@given(st.binary(max_size=120), st.sampled_from(["f-idx1-ubyte", "f-idx1-ubyte.gz"]))
def test_read_idx_on_random_files(tmp_path_factory: pytest.TempPathFactory, content: bytes, name: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(content)
    _check_file(path)
