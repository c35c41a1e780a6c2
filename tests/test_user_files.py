"""Files a user names: read errors name the file; what samullm_lc writes is mode 0600 and replaced whole."""

import os
import stat

import pytest

from samullm_lc import user_files
from samullm_lc.errors import ConfigError, ProfileError
from samullm_lc.limits import Limit
from samullm_lc.user_files import check_writable, read_user_text, write_private


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_written_file_is_private_whatever_the_umask_and_the_old_mode(tmp_path):
    old = tmp_path / "r.json"
    old.write_text("old")
    old.chmod(0o644)
    previous = os.umask(0)
    try:
        write_private(old, "new")
        fresh = write_private(tmp_path / "sub" / "f.bin", b"\x00\x01")
    finally:
        os.umask(previous)
    assert old.read_text() == "new" and _mode(old) == 0o600
    assert fresh.read_bytes() == b"\x00\x01" and _mode(fresh) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "sub"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text("old")

    def disk_full(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_private(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_check_writable_creates_parents_and_refuses_folders_and_files_as_parents(tmp_path):
    assert check_writable(tmp_path / "a" / "b" / "r.json", what="run report").parent.is_dir()
    with pytest.raises(ConfigError, match="the run report path .* is a folder; give a writable file path"):
        check_writable(tmp_path, what="run report")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot write the run report to .*file/r.json"):
        check_writable(tmp_path / "file" / "r.json", what="run report")
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == []  # the probe file is gone


def test_reading_names_the_file_the_problem_and_the_fix(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"ok\xff")
    with pytest.raises(ProfileError, match=r"engine profile .*bad.json is not UTF-8 text \(byte 2: .*\); make one"):
        read_user_text(bad, what="engine profile", fix="make one", error=ProfileError)
    with pytest.raises(ConfigError, match="cannot read app graph .*nope.json: No such file or directory; fix"):
        read_user_text(tmp_path / "nope.json", what="app graph", fix="fix")
    good = tmp_path / "ok.txt"
    good.write_text("café", encoding="utf-8")
    assert read_user_text(good, what="x", fix="y") == "café"


@pytest.mark.timeout(20)
def test_a_pipe_or_device_is_refused_never_read_or_replaced(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(ConfigError, match="pipe is not a regular file"):
        read_user_text(pipe, what="app graph", fix="fix")
    with pytest.raises(ConfigError, match="the run report path .*pipe is not a regular file"):
        check_writable(pipe, what="run report")
    with pytest.raises(ConfigError, match="is not a regular file"):
        write_private(pipe, "x")
    assert stat.S_ISFIFO(pipe.stat().st_mode)


def test_a_symlink_keeps_pointing_at_its_target(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_private(link, "new")
    assert link.is_symlink() and target.read_text() == "new" and _mode(target) == 0o600


def test_a_file_over_the_size_limit_is_refused_before_it_is_decoded(tmp_path, monkeypatch):
    monkeypatch.setattr(user_files, "USER_FILE_BYTES", Limit("bytes", 10, "the reason", minimum=0))
    big = tmp_path / "big.json"
    big.write_text("x" * 11)
    with pytest.raises(ConfigError, match="big.json is over the limit of 10 bytes; the reason"):
        read_user_text(big, what="app graph", fix="fix")
