"""The C++ tar listing (scan_fast._C.list_tar, behind tar_shards.shard_samples) against Python's
tarfile, the oracle: the same regular-file members, names, data offsets and sizes, on tars that
tarfile writes in each of its formats, with long names, directories, links, pax records and global
headers; and the same place to stop on tars cut or damaged anywhere."""
import io
import os
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scan_fast import _C

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
_name_part = st.text(alphabet=st.sampled_from([*"abcXYZ019._-", "é", "日"]), min_size=1, max_size=60)


@st.composite
def tar_files(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    members = []
    for i in range(draw(st.integers(0, 8))):
        folder = draw(st.sampled_from(["", "a/", "deep/" * draw(st.integers(1, 30))]))
        name = f"{folder}{i}-{draw(_name_part)}"
        kind = draw(st.sampled_from(["file", "file", "file", "dir", "symlink"]))
        size = draw(st.sampled_from([0, 1, 511, 512, 513, 3000]))
        members.append((name, kind, size))
    global_pax = fmt == "pax" and draw(st.booleans())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=FORMATS[fmt], encoding="utf-8",
                      pax_headers={"comment": "x" * 50} if global_pax else None) as tar:
        for name, kind, size in members:
            if fmt == "ustar" and (len(name.encode()) > 255 or not name.isascii()):
                continue  # ustar cannot hold it: tarfile refuses
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "target/" + "l" * draw(st.integers(1, 150))
                if fmt == "ustar" and len(info.linkname) > 100:
                    continue
                tar.addfile(info)
            else:
                info.size = size
                if fmt == "pax" and draw(st.booleans()):
                    info.pax_headers = {"mtime": "1.5", "custom": "v" * draw(st.integers(1, 700))}
                tar.addfile(info, io.BytesIO(bytes(range(256)) * (size // 256) + bytes(size % 256)))
    return buf.getvalue()


def _oracle(path):
    """tarfile's regular files and where it stopped (its offset after the last member)."""
    with tarfile.open(path, "r:") as tar:
        found = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
        return found, tar.offset


def _ours(path):
    with open(path, "rb") as f:
        names, offsets, sizes, end, stop, detail = _C.list_tar(f.fileno(), os.path.getsize(path))
    found = [(n.decode("utf-8", "surrogateescape"), int(o), int(s)) for n, o, s in zip(names, offsets, sizes)]
    return found, end, stop, detail


@settings(max_examples=200, deadline=None)
@given(tar_files())
def test_listing_matches_tarfile(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("tar") / "t.tar"
    path.write_bytes(data)
    found, our_end, stop, detail = _ours(path)
    try:
        expected, end = _oracle(path)
    except tarfile.ReadError:  # a global pax header and no member: tarfile refuses it, and so do we
        assert (found, stop) == ([], "not_tar")
        return
    assert (found, stop, detail) == (expected, "end", "")
    assert our_end == end and data[end:end + 1024] == bytes(1024)


@settings(max_examples=200, deadline=None)
@given(tar_files(), st.data())
def test_cut_or_damaged_tar_stops_where_tarfile_stops(tmp_path_factory, data, draw):
    """A tar cut anywhere, or with a byte overwritten anywhere: the members listed are tarfile's, and
    where tarfile raises (a member past the end, a bad header after a pax or long-name header) we
    say "error"; where it stops quietly we stop at the same byte."""
    cut = draw.draw(st.integers(0, len(data)))
    damaged = bytearray(data[:cut])
    if damaged and draw.draw(st.booleans()):
        damaged[draw.draw(st.integers(0, len(damaged) - 1))] ^= draw.draw(st.integers(1, 255))
    path = tmp_path_factory.mktemp("tar") / "t.tar"
    path.write_bytes(bytes(damaged))
    found, end, stop, detail = _ours(path)
    try:
        with tarfile.open(path, "r:") as tar:
            expected, raised = [], None
            try:
                for m in tar:
                    if m.offset_data + m.size > len(damaged):
                        raise tarfile.ReadError("past the end")
                    if m.isfile():
                        expected.append((m.name, m.offset_data, m.size))
            except tarfile.ReadError as err:
                raised = err
            assert stop == ("error" if raised else "end"), (stop, detail, raised)
            assert found == expected
            if not raised:
                assert end == tar.offset
    except tarfile.ReadError:  # tarfile cannot open it: neither can we
        assert stop == "not_tar" and found == []


def test_shards_are_named_by_path_folder_glob_or_brace_pattern(tmp_path):
    from scan_fast.data.write.tar_shards import expand_shards

    names = [tmp_path / f"shard-{i:03d}.tar" for i in range(3)]
    for path in names:
        path.write_bytes(b"")
    expected = [str(p) for p in names]
    assert expand_shards(str(tmp_path / "shard-{000..002}.tar")) == expected
    assert expand_shards(str(tmp_path)) == expected == expand_shards(str(tmp_path / "shard-*.tar"))
    assert expand_shards([str(names[2]), str(tmp_path / "shard-{000..001}.tar")]) == expected[2:] + expected[:2]
    with pytest.raises(FileNotFoundError, match=r"webdataset shard .*shard-003\.tar does not exist"):
        expand_shards(str(tmp_path / "shard-{000..003}.tar"))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([*"aB1._-/", "é"]), max_size=20))
def test_member_key_is_webdatasets_split_of_the_name(name):
    from scan_fast.data.write.tar_shards import member_key

    folder, base = os.path.split(name)  # the oracle: the folder kept, the base name split at its first dot
    key, _, ext = base.partition(".")
    assert member_key(name) == (os.path.join(folder, key), ext.lower())
