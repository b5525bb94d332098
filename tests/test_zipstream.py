"""The streaming zip reader (datalad_fmrif.content.zipstream) on the shapes
XNAT's Java ``java.util.zip.ZipOutputStream`` writes.

ZipOutputStream writes a STORED entry with its sizes and CRC in the local
header and no data descriptor (it refuses a STORED entry without them), and
a DEFLATED entry with zero sizes in the header, flag bit 3, and a data
descriptor (with its signature) after the data; entry names are UTF-8 with
flag bit 11. A stored entry of unknown length followed by a descriptor
(which ``stream-unzip`` refuses) is read too. The zips are built byte by
byte here and checked with Python's ``zipfile`` first, so that the test
shapes are real zips.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
import zlib

import pytest

from datalad_fmrif.content.zipstream import (BadZip, Reader, StreamEnded, copy_entry,
                                             entry_name, read_header)

UTF8 = 0x800
DESCRIPTOR = 0x08


def _local(name: bytes, flags: int, method: int, crc: int, csize: int, usize: int) -> bytes:
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21,
                       crc, csize, usize, len(name), 0) + name


def _central(entries) -> bytes:
    out, offsets = b"", []
    for name, flags, method, crc, csize, usize, offset in entries:
        out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, method, 0,
                           0x21, crc, csize, usize, len(name), 0, 0, 0, 0, 0,
                           offset) + name
        offsets.append(offset)
    return out


def java_zip(files: list[tuple[str, bytes, str]]) -> bytes:
    """A zip as ZipOutputStream writes it: ``("stored"|"deflated"|"stored-dd")``."""
    body, central = b"", []
    for name, data, how in files:
        raw = name.encode("utf-8")
        crc, offset = zlib.crc32(data), len(body)
        if how == "stored":
            body += _local(raw, UTF8, 0, crc, len(data), len(data)) + data
            central.append((raw, UTF8, 0, crc, len(data), len(data), offset))
            continue
        if how == "deflated":
            comp = zlib.compressobj(6, zlib.DEFLATED, -15)
            packed, method = comp.compress(data) + comp.flush(), 8
        else:  # a stored entry whose sizes only the descriptor says
            packed, method = data, 0
        body += _local(raw, UTF8 | DESCRIPTOR, method, 0, 0, 0) + packed
        body += struct.pack("<IIII", 0x08074B50, crc, len(packed), len(data))
        central.append((raw, UTF8 | DESCRIPTOR, method, crc, len(packed), len(data), offset))
    cd = _central(central)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central),
                      len(cd), len(body), 0)
    return body + cd + end


def read_all(blob: bytes, sizes: dict[str, int] | None = None) -> dict[str, tuple[int, str]]:
    stream = io.BytesIO(blob)
    reader = Reader(stream.read)
    got = {}
    while (entry := read_header(reader)) is not None:
        out = io.BytesIO()
        size, md5 = copy_entry(reader, entry, out, (sizes or {}).get(entry.name))
        assert hashlib.md5(out.getvalue()).hexdigest() == md5
        got[entry.name] = (size, md5)
    return got


FILES = [
    ("S1/scans/1-T1w/resources/DICOM/files/1.3.12.2.1107.dcm", b"DICM" * 300, "stored"),
    ("S1/scans/1-T1w/resources/DICOM/files/späť.dcm", b"\x00\x01" * 5000, "deflated"),
    ("S1/scans/2-ECG/resources/secondary/files/ECG #2.1D", b"0.1\n" * 40, "stored-dd"),
    ("S1/scans/2-ECG/resources/secondary/files/empty", b"", "stored"),
]


@pytest.mark.parametrize("how", ["stored", "deflated", "stored-dd"])
def test_reads_each_shape_of_java_zip_output(how):
    files = [(n, d, how) for n, d, _ in FILES]
    blob = java_zip(files)
    with zipfile.ZipFile(io.BytesIO(blob)) as z:  # a real zip
        assert {i.filename: z.read(i) for i in z.infolist()} == {n: d for n, d, _ in files}
    assert read_all(blob) == {n: (len(d), hashlib.md5(d).hexdigest()) for n, d, _ in files}


def test_reads_a_mix_with_listed_sizes():
    blob = java_zip(FILES)
    sizes = {n: len(d) for n, d, _ in FILES}
    assert read_all(blob, sizes) == {n: (len(d), hashlib.md5(d).hexdigest())
                                     for n, d, _ in FILES}


def test_a_wrong_crc_is_a_bad_zip():
    name, data, _ = FILES[0]
    blob = bytearray(java_zip([(name, data, "stored")]))
    blob[30 + len(name.encode()) + 5] ^= 0xFF  # one byte of the data
    with pytest.raises(BadZip, match="CRC"):
        read_all(bytes(blob))


def test_a_stream_that_breaks_off_inside_an_entry():
    name, data, _ = FILES[1]
    blob = java_zip([(name, data, "deflated")])
    with pytest.raises(StreamEnded):
        read_all(blob[:60])


def test_entry_names_are_only_matched_never_paths():
    wanted = {"späť.dcm", "sub/x.dcm"}
    assert entry_name("S1/scans/1/resources/DICOM/files/späť.dcm", wanted) == "späť.dcm"
    assert entry_name("a/b/sub/x.dcm", wanted) == "sub/x.dcm"
    assert entry_name("../späť.dcm", wanted) is None
    assert entry_name("/späť.dcm", wanted) is None
    assert entry_name("c:\\späť.dcm", wanted) is None
