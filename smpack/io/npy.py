"""Arrays from .npy files and .npz archives the user gives (warmup files, evaluation data),
each header checked against the bytes that are there before numpy allocates what it claims:
a header of a few bytes may claim 10^12 elements, and numpy would try to allocate them.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import IO, cast

import numpy as np

# How much a member of each compression np.savez uses grows at most when read: stored, not
# at all; deflated, 1032 times (zlib's technical notes).
_MOST_GROWS = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}


class ArraysTooLarge(ValueError):
    """Arrays that would take more bytes than their reader allows."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"its arrays take {size} bytes, more than {limit}")
        self.size, self.limit = size, limit


def npy_header(stream: IO[bytes], size: int) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The shape, Fortran order and dtype a .npy file of `size` bytes holds, its `stream`
    left at the data. Raises ValueError for a header that is not one (numpy's own), holds
    Python objects, or promises other than `size` bytes."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject:
        msg = "holds Python objects, which are only read by unpickling"
        raise ValueError(msg)
    expected = stream.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if any(d < 0 for d in shape) or expected != size:
        msg = f"its header promises {shape} {dtype} ({expected} bytes), the file has {size}"
        raise ValueError(msg)
    return shape, fortran, dtype


def load_npz(path: Path, limit: int) -> dict[str, np.ndarray]:
    """Every array of the .npz archive at `path`, by name (`np.load`'s names: without .npy).

    Raises ValueError (numpy's and `npy_header`'s) or zipfile.BadZipFile for an archive
    that does not hold arrays, or whose members claim more bytes than it could hold;
    `ArraysTooLarge` if they claim more than `limit` bytes together.
    """
    arrays = {}
    archive_size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        for member in members:
            _check_claim(member, archive_size)
        claimed = sum(member.file_size for member in members)
        if claimed > limit:
            raise ArraysTooLarge(claimed, limit)
        for member in members:
            with archive.open(member) as stream:
                try:
                    shape, fortran, dtype = npy_header(stream, member.file_size)
                except ValueError as e:
                    msg = f"{member.filename!r}: {e}"
                    raise ValueError(msg) from e
                # Read into a bytearray, so the array is writable without a copy.
                data = bytearray(member.file_size - stream.tell())
                # zipfile checks the size and the CRC as the read reaches the end.
                if cast(io.BufferedIOBase, stream).readinto(data) != len(data):
                    msg = f"{member.filename!r} ends before its data"
                    raise ValueError(msg)
            array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
            arrays[member.filename.removesuffix(".npy")] = array
    return arrays


def _check_claim(member: zipfile.ZipInfo, archive_size: int) -> None:
    """Refuse a member whose sizes the archive could not hold."""
    # Each size is a claim of the archive's directory; zipfile checks them only once the
    # member is read, after numpy would have allocated its array.
    grows = _MOST_GROWS.get(member.compress_type)
    if grows is None:
        msg = (
            f"{member.filename!r} is compressed with zip method "
            f"{member.compress_type}; np.savez stores or deflates"
        )
        raise ValueError(msg)
    if member.compress_size > archive_size or member.file_size > member.compress_size * grows:
        msg = (
            f"{member.filename!r} claims {member.file_size} bytes, more than the "
            f"{member.compress_size} stored for it can hold"
        )
        raise ValueError(msg)
