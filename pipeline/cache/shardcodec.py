"""The bytes of a sharded array object as this cache writes and reads them (Zarr v3 sharding codec).

Codec chain, as declared in each array's zarr.json: sharding_indexed with inner codecs bytes(little) + crc32c and
index codecs bytes(little) + crc32c, index at the end. An object holds the stored inner chunks back to back, then
one (offset, nbytes) uint64 pair per inner chunk in C order of the chunk grid ((2^64 − 1, 2^64 − 1) for a chunk
equal to the fill value, which is not stored), then the crc32c of that index. zarr-python spends ~0.1 ms per inner
chunk and per selected element; encoding and decoding whole rows of chunks here with numpy is ~100x faster.
"""

import google_crc32c
import numpy as np

EMPTY = 2 ** 64 - 1


def crc32c(data):
    return np.uint32(google_crc32c.value(data)).tobytes()


def index_nbytes(num_chunks):
    return 16 * num_chunks + 4


def encode_shard(data, chunk_axes):
    """One object holding all of `data` (fill NaN), whose first `chunk_axes` axes are chunked by 1, the rest whole."""
    rows = np.ascontiguousarray(data, data.dtype.newbyteorder("<")).reshape(int(np.prod(data.shape[:chunk_axes])), -1)
    stored = np.flatnonzero(~np.isnan(rows).all(axis=1))
    raw = rows.view(np.uint8)
    size = raw.shape[1] + 4
    index = np.full((len(rows), 2), EMPTY, dtype="<u8")
    index[stored, 0] = np.arange(len(stored), dtype=np.uint64) * size
    index[stored, 1] = size
    body = np.empty((len(stored), size), np.uint8)
    body[:, :-4] = raw[stored]
    body[:, -4:] = np.frombuffer(b"".join(crc32c(row) for row in body[:, :-4]), np.uint8).reshape(-1, 4)
    return body.tobytes() + index.tobytes() + crc32c(index.tobytes())


def decode_index(raw, num_chunks):
    """(offsets, nbytes) uint64 arrays of every inner chunk from the index bytes; ValueError when its crc32c fails."""
    if len(raw) != index_nbytes(num_chunks) or crc32c(raw[:-4]) != raw[-4:]:
        raise ValueError("the shard index fails its crc32c")
    index = np.frombuffer(raw[:-4], "<u8").reshape(num_chunks, 2)
    return index[:, 0], index[:, 1]


def failing_chunk(raws):
    """The position of the first inner chunk (its bytes and crc32c) whose crc32c fails, or None."""
    return next((i for i, raw in enumerate(raws) if crc32c(raw[:-4]) != raw[-4:]), None)


def decode_chunks(raws, dtype, chunk_shape):
    """Inner chunks (each its bytes and crc32c, checked by `failing_chunk`) as one array (len(raws), *chunk_shape)."""
    data = b"".join(raw[:-4] for raw in raws)
    return np.frombuffer(data, np.dtype(dtype).newbyteorder("<")).reshape(len(raws), *chunk_shape)
