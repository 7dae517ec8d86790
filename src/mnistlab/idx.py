"""The IDX file format of MNIST: parse and write, checked against the header.

An IDX file is a 4-byte magic (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in C order. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from mnistlab import fileio
from mnistlab.errors import MnistlabError

MAGIC_BYTES = 4  # 0x00 0x00 <type code> <ndim>
DIM_BYTES = 4  # each dimension: big-endian uint32
MAX_NDIM = 4  # MNIST uses 1 (labels) and 3 (images); more is a forged header
MAX_PAYLOAD_BYTES = 1 << 30  # 1 GiB: far above any MNIST-format file, bounds a forged header

# IDX type code -> NumPy dtype (big-endian, as the format stores multi-byte values).
TYPE_CODES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib's window-bits code for "gzip header and trailer"


def _parse_header(head: bytes, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, shape, header size) from the first bytes of an IDX file."""
    if len(head) < MAGIC_BYTES:
        raise MnistlabError(f"{name}: file is {len(head)} bytes, too short for an IDX header")
    zero1, zero2, code, ndim = head[:MAGIC_BYTES]
    if zero1 or zero2 or code not in TYPE_CODES or not 1 <= ndim <= MAX_NDIM:
        raise MnistlabError(
            f"{name}: bad IDX magic {head[:MAGIC_BYTES].hex()}; expected 0000 + type code "
            f"(08 for uint8) + dimension count 01..{MAX_NDIM:02x}"
        )
    header_size = MAGIC_BYTES + DIM_BYTES * ndim
    if len(head) < header_size:
        raise MnistlabError(f"{name}: truncated header; {ndim} dimensions need {header_size} bytes")
    shape = struct.unpack(f">{ndim}I", head[MAGIC_BYTES:header_size])
    return TYPE_CODES[code], shape, header_size


def _payload_bytes(dtype: np.dtype, shape: tuple[int, ...], name: str) -> int:
    """Bytes of the values a header declares; a shape over the limit is refused even when one of
    its dimensions is 0 (NumPy cannot make an array of shape (0, 2**21, 2**21, 2**21) either)."""
    size = dtype.itemsize * math.prod(shape)  # Python ints: np.prod would wrap past 2**63
    span = dtype.itemsize * math.prod(max(d, 1) for d in shape)  # = size unless a dimension is 0
    if span > MAX_PAYLOAD_BYTES:
        raise MnistlabError(f"{name}: header claims shape {shape} ({size} bytes"
                            + (f", {span} without its empty dimensions" if size != span else "")
                            + "), over the 1 GiB limit")
    return size


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse a complete, uncompressed IDX file into an array of the header's shape.

    Raises MnistlabError naming ``name`` when the magic, dimensions or length are wrong.
    The result is a read-only view on ``data`` for uint8 files (no copy).
    """
    dtype, shape, header_size = _parse_header(data[: MAGIC_BYTES + DIM_BYTES * MAX_NDIM], name)
    expected = header_size + _payload_bytes(dtype, shape, name)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise MnistlabError(
            f"{name}: {what}: header shape {shape} needs {expected} bytes, file has {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _inflate(raw: bytes, limit: int, name: str) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the content of gzip data ``raw``, read across all its members.

    A gzip file may hold several members one after another (``cat a.gz b.gz``, pigz, bgzip);
    its content is theirs joined, as gzip(1) reads it. Returns ``(content, complete)``; complete
    is False when the input stops inside a member. Corrupt data, or bytes after the last member
    other than zero padding (which gzip(1) allows), raise MnistlabError.
    """
    data = b""
    try:
        # One call inflates the usual single-member file with no copy of the output.
        inflater = zlib.decompressobj(wbits=GZIP_WBITS)
        data = inflater.decompress(raw, limit)
        if len(data) >= limit or not inflater.eof:
            return data, inflater.eof
        rest = inflater.unused_data.lstrip(b"\0")
        if not rest:
            return data, True
        if rest[:2] != GZIP_MAGIC:
            raise MnistlabError(f"{name}: has trailing bytes after the end of the gzip stream")
        # Further members: gzip reads its input in bounded chunks (no quadratic re-copying of
        # the rest per member) and stops at the output limit (no bomb).
        with gzip.GzipFile(fileobj=io.BytesIO(rest)) as members:
            return data + members.read(limit - len(data)), True
    except EOFError:  # the gzip module's word for a member cut off
        return data, False
    except (zlib.error, OSError) as exc:  # gzip.BadGzipFile is an OSError
        raise MnistlabError(f"{name}: corrupt gzip data ({exc})") from None


def gunzip_bounded(raw: bytes, name: str = "<bytes>") -> bytes:
    """Decompress a gzip'd IDX file, never producing more bytes than its own header declares.

    A forged header or a decompression bomb therefore cannot make us allocate more than the
    1 GiB payload limit, and a cut-off stream is an error rather than silently short data.
    Multi-member files are read as gzip(1) reads them.
    """
    head, _ = _inflate(raw, MAGIC_BYTES + DIM_BYTES * MAX_NDIM, name)
    dtype, shape, header_size = _parse_header(head, name)
    expected = header_size + _payload_bytes(dtype, shape, name)
    data, complete = _inflate(raw, expected + 1, name)  # one byte past the declared size shows extra data
    if len(data) > expected:
        raise MnistlabError(f"{name}: has trailing bytes beyond header shape {shape} ({expected} bytes)")
    if not complete or len(data) < expected:
        raise MnistlabError(
            f"{name}: truncated gzip stream ({len(data)} of {expected} bytes decompressed)"
        )
    return data


def decompressed_bytes(raw: bytes, name: str = "<bytes>") -> bytes:
    """Return the IDX content of ``raw``, gunzipping it if it starts with the gzip magic."""
    return gunzip_bounded(raw, name) if raw[:2] == GZIP_MAGIC else raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, ``.gz`` or raw, into an array of the header's shape and dtype."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MnistlabError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_idx(decompressed_bytes(raw, str(path)), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """Return the IDX bytes of ``array`` (uncompressed)."""
    array = np.asarray(array)
    for code, dtype in TYPE_CODES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            break
    else:
        raise MnistlabError(f"cannot write dtype {array.dtype} as IDX; expected one of uint8, int8, int16, int32, float32, float64")
    if not 1 <= array.ndim <= MAX_NDIM:
        raise MnistlabError(f"cannot write a {array.ndim}-D array as IDX; expected 1..{MAX_NDIM} dimensions")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzip-compressed when ``path`` ends in ``.gz``; atomic."""
    data = encode_idx(array)
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    fileio.write_bytes(path, data)
