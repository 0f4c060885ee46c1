"""Project ZIP validation and atomic installation (robot_project), without sockets."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchyard.services.robot import project as rp
from switchyard.services.robot.project import ProjectRejected, ZipLimits

LIMITS = ZipLimits(max_zip_bytes=1 << 20, max_entries=20, max_total_bytes=8 << 20, max_ratio=50)


def make_zip(entries: dict[str, bytes | str], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buf.getvalue()


def symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("main.py", "x = 1\n")
        info = zipfile.ZipInfo("evil")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    return buf.getvalue()


def lying_size_zip() -> bytes:
    """A central directory that claims 100 bytes for a 200 kB entry."""
    data = make_zip({"main.py": "x = 1\n", "big.bin": b"A" * 200_000})
    record = data.rfind(b"PK\x01\x02", 0, data.rfind(b"big.bin"))  # its central directory header
    size_at = record + 24  # uncompressed size field
    return data[:size_at] + (100).to_bytes(4, "little") + data[size_at + 4 :]


HOSTILE = {
    "traversal": (make_zip({"main.py": "x=1", "../evil.py": "boom"}), "traversal"),
    "traversal_backslash": (make_zip({"main.py": "x=1", "a\\..\\..\\evil.py": "boom"}), "traversal"),
    "absolute": (make_zip({"main.py": "x=1", "/etc/cron.d/evil": "boom"}), "absolute"),
    "drive": (make_zip({"main.py": "x=1", "C:/evil.py": "boom"}), "absolute"),
    "symlink": (symlink_zip(), "symlink"),
    "bomb": (make_zip({"main.py": "x=1", "zeros.bin": b"\0" * (4 << 20)}), "zip bomb"),
    "too_big_unpacked": (
        make_zip(
            {"main.py": "x=1", **{f"f{i}.bin": os.urandom(1 << 20) for i in range(9)}}, compression=zipfile.ZIP_STORED
        ),
        None,
    ),
    "no_main": (make_zip({"app.py": "x=1", "lib/util.py": "y=2"}), "no main.py"),
    "main_too_deep": (make_zip({"a/b/main.py": "x=1"}), "no main.py"),
    "two_top_folders": (make_zip({"a/main.py": "x=1", "b/other.py": "y"}), "no main.py"),
    "not_a_zip": (b"this is not a zip file at all" * 10, "not a valid ZIP"),
    "empty": (b"", "not a valid ZIP"),
    "too_many_entries": (make_zip({"main.py": "x", **{f"m{i}.py": "" for i in range(25)}}), "entries"),
    "duplicate": (None, "duplicate"),
}


def _duplicate_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("main.py", "x = 1")
        with pytest.warns(UserWarning):
            archive.writestr("main.py", "x = 2")
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_zip_rejected(case: str) -> None:
    data, words = HOSTILE[case]
    if data is None:
        data = _duplicate_zip()
    limits = LIMITS if case != "too_big_unpacked" else ZipLimits(max_zip_bytes=20 << 20, max_total_bytes=8 << 20)
    with pytest.raises(ProjectRejected) as info:
        rp.inspect_zip(data, limits)
    if words:
        assert words in str(info.value)


def test_over_size_limit() -> None:
    data = make_zip({"main.py": os.urandom(300_000)}, compression=zipfile.ZIP_STORED)
    with pytest.raises(ProjectRejected, match="limit is 100000"):
        rp.inspect_zip(data, ZipLimits(max_zip_bytes=100_000))


def test_valid_layouts() -> None:
    root = rp.inspect_zip(make_zip({"main.py": "x", "pkg/mod.py": "y", "requirements.txt": "numpy"}), LIMITS)
    assert root.prefix == "" and root.has_requirements
    assert sorted(path for _, path in root.files) == ["main.py", "pkg/mod.py", "requirements.txt"]
    folder = rp.inspect_zip(
        make_zip(
            {
                "proj/": b"",
                "proj/main.py": "x",
                "proj/lib/a.py": "y",
                "__MACOSX/proj/._main.py": "junk",
                "proj/.DS_Store": "junk",
            }
        ),
        LIMITS,
    )
    assert folder.prefix == "proj/"
    assert sorted(path for _, path in folder.files) == ["lib/a.py", "main.py"]
    # small, very compressible files are fine (the ratio check starts at 1 MiB)
    rp.inspect_zip(make_zip({"main.py": "x", "pad.txt": b" " * 500_000}), LIMITS)


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def projects(tmp_path: Path) -> Path:
    default = tmp_path / "shipped"
    default.mkdir()
    (default / "main.py").write_text("DEFAULT = True\n")
    (default / "__init__.py").write_text("")  # never copied
    projects = tmp_path / "projects"
    rp.ensure_layout(projects, default)
    return projects


def test_layout_seeds_default_and_current(projects: Path) -> None:
    assert tree(projects / "default") == {"main.py": b"DEFAULT = True\n"}
    assert (projects / "current").is_symlink()
    assert tree(projects / "current") == {"main.py": b"DEFAULT = True\n"}


def test_install_replaces_atomically_and_rejects_leave_current(projects: Path) -> None:
    result = rp.install_zip(projects, make_zip({"proj/main.py": "NEW = 1\n", "proj/data/a.txt": "a"}), LIMITS)
    assert result.files == 2 and result.prefix == "proj/"
    assert tree(projects / "current") == {"main.py": b"NEW = 1\n", "data/a.txt": b"a"}
    link_before = os.readlink(projects / "current")
    before = tree(projects / "current")
    for case in sorted(HOSTILE):
        data = HOSTILE[case][0]
        if data is None:
            continue
        with pytest.raises(ProjectRejected):
            rp.install_zip(projects, data, LIMITS)
        assert os.readlink(projects / "current") == link_before, case
        assert tree(projects / "current") == before, case
    assert not list(projects.glob(".staging-*"))
    assert len(list((projects / ".releases").iterdir())) == 1  # old releases are removed


def test_lying_sizes_stop_extraction(projects: Path) -> None:
    before = tree(projects / "current")
    with pytest.raises(ProjectRejected):
        rp.install_zip(projects, lying_size_zip(), LIMITS)
    assert tree(projects / "current") == before
    assert not list(projects.glob(".staging-*"))


def test_empty_current_gets_default(projects: Path) -> None:
    for p in (projects / "current").iterdir():
        p.unlink()
    assert rp.ensure_current(projects) is True
    assert tree(projects / "current") == {"main.py": b"DEFAULT = True\n"}
    assert rp.ensure_current(projects) is False


def test_plain_current_directory_is_migrated(tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    (projects / "current").mkdir(parents=True)
    (projects / "current" / "main.py").write_text("MINE = 1\n")
    rp.ensure_layout(projects, rp.shipped_default())
    assert (projects / "current").is_symlink()
    assert tree(projects / "current") == {"main.py": b"MINE = 1\n"}
    assert "sport_client" in (projects / "default" / "main.py").read_text()
    assert not (projects / "default" / "__init__.py").exists()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_rejected(data: bytes) -> None:
    try:
        rp.inspect_zip(data, LIMITS)
    except ProjectRejected:
        pass


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=12),
        st.binary(max_size=64),
        max_size=6,
    )
)
def test_arbitrary_names_never_escape(entries: dict[str, bytes]) -> None:
    try:
        plan = rp.inspect_zip(make_zip({"main.py": b"x", **entries}), LIMITS)
    except ProjectRejected:
        return
    for _, path in plan.files:
        parts = path.split("/")
        assert ".." not in parts and not path.startswith("/") and "" not in parts
