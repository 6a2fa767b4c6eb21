"""The crash-safe file layer: owner-tagged temporaries, dead-owner clean-up, journaled group commits, and the
refusal of outputs that are inputs. Crashes are real: a child process is killed at a named point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from facecleaner import fileio
from facecleaner.errors import InputError


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def tagged(path: Path, pid: int, host: str | None = None) -> Path:
    return path.with_name(f".{path.name}.{host or fileio.owner_tag().rpartition('-')[0]}-{pid}.0123abcd.tmp")


def test_temporaries_carry_host_and_pid(tmp_path: Path) -> None:
    tmp = fileio.temporary_beside(tmp_path / "scores.parquet")
    assert tmp.is_file() and tmp.parent == tmp_path
    assert tmp.name.startswith(".scores.parquet.") and tmp.name.endswith(".tmp")
    assert f"-{os.getpid()}." in tmp.name
    folder = fileio.temporary_beside(tmp_path / "dest", directory=True)
    assert folder.is_dir() and folder.name.startswith(".dest.")


def test_only_dead_owners_temporaries_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    dead = tagged(target, dead_pid())
    dead.write_bytes(b"x" * 10)
    dead_folder = tagged(tmp_path / "dest", dead_pid())
    (dead_folder / "a").mkdir(parents=True)
    alive = tagged(target, os.getpid())
    alive.write_bytes(b"")
    other_host = tagged(target, dead_pid(), host="elsewhere")
    other_host.write_bytes(b"")
    other_file = tagged(tmp_path / "model.pt.bak", dead_pid())  # the temporary of another output
    other_file.write_bytes(b"")
    legacy = tmp_path / ".model.pt.k3j2h1g0.tmp"  # no owner tag: never guessed at
    legacy.write_bytes(b"")
    assert fileio.remove_dead_temporaries(target) == [dead]
    assert fileio.remove_dead_temporaries(tmp_path / "dest") == [dead_folder]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (alive, other_host, other_file, legacy))


def test_atomic_output_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), fileio.atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with fileio.atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


@pytest.mark.parametrize("group", [False, True])
def test_files_are_synced_before_their_rename_and_the_folder_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    group: bool) -> None:
    """Issue #9, item 9: a power cut never leaves a renamed but empty file, nor loses the rename."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: events.append(("replace", str(b))) or real_replace(a, b))
    targets = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    if group:
        with fileio.atomic_outputs(targets) as temps:
            for tmp in temps:
                tmp.write_text("data")
        temps = [str(t) for t in temps]
    else:
        with fileio.atomic_output(targets[0]) as tmp:
            tmp.write_text("data")
        temps, targets = [str(tmp)], targets[:1]
    for tmp, target in zip(temps, targets, strict=True):
        renamed = events.index(("replace", str(target)))
        assert ("fsync", tmp) in events[:renamed], events  # the data first
        assert ("fsync", str(tmp_path)) in events[renamed + 1:], events  # then the folder holding the new name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


GROUP_WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from facecleaner.fileio import atomic_outputs
    folder = Path(sys.argv[1])
    names = ["a.parquet", "b.parquet", "c.parquet"]
    with atomic_outputs([folder / n for n in names], rollback=sys.argv[2] == "rollback") as temps:
        for tmp, name in zip(temps, names):
            tmp.write_text("new " + name)
""")


def run_group_writer(folder: Path, fault: str, mode: str = "forward") -> int:
    env = {**os.environ, "FACECLEANER_FAULT": fault}
    return subprocess.run([sys.executable, "-c", GROUP_WRITER, str(folder), mode], env=env).returncode


def test_a_group_killed_between_renames_is_completed_by_the_next_command(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.parquet").write_text(f"old {name}.parquet")
    assert run_group_writer(tmp_path, "between renames") == 137
    contents = {p.name: p.read_text() for p in tmp_path.glob("*.parquet")}
    assert contents == {"a.parquet": "new a.parquet", "b.parquet": "old b.parquet", "c.parquet": "old c.parquet"}
    journals = list(tmp_path.glob(".facecleaner-commit.*"))
    assert len(journals) == 1
    done = fileio.recover_outputs([tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"])
    assert len(done) == 1 and "completed" in done[0]
    assert {p.name: p.read_text() for p in tmp_path.glob("*.parquet")} == {
        n: f"new {n}" for n in ("a.parquet", "b.parquet", "c.parquet")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet", "c.parquet"]


def test_a_rollback_group_killed_between_renames_is_undone(tmp_path: Path) -> None:
    assert run_group_writer(tmp_path, "between renames", "rollback") == 137
    assert [p.name for p in tmp_path.glob("*.parquet")] == ["a.parquet"]
    fileio.recover_outputs([tmp_path / "a.parquet"])
    assert list(tmp_path.iterdir()) == []


def test_a_group_killed_after_its_journal_is_completed(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_text("old")
    assert run_group_writer(tmp_path, "journal written") == 137
    fileio.recover_outputs([tmp_path / n for n in ("a.parquet", "b.parquet", "c.parquet")])
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "a.parquet": "new a.parquet", "b.parquet": "new b.parquet", "c.parquet": "new c.parquet"}


def test_a_journal_cut_off_while_written_is_dropped_with_its_temporaries(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_text("old")
    tmp = tagged(tmp_path / "a.parquet", dead_pid())
    tmp.write_text("new")
    pid = dead_pid()
    journal = tmp_path / f"{fileio.JOURNAL_PREFIX}{fileio.owner_tag().rpartition('-')[0]}-{pid}.0123abcd.json"
    journal.write_text('{"rollback": false, "pairs": [["')
    assert fileio.recover_outputs([tmp_path / "a.parquet"]) == []
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.parquet": "old"}


def test_a_live_processs_journal_is_left_alone(tmp_path: Path) -> None:
    journal = tmp_path / f"{fileio.JOURNAL_PREFIX}{fileio.owner_tag()}.0123abcd{fileio.JOURNAL_SUFFIX}"
    journal.write_text('{"rollback": false, "pairs": []}')
    assert fileio.recover_outputs([tmp_path / "a.parquet"]) == []
    assert journal.exists()


def test_outputs_that_are_inputs_are_refused(tmp_path: Path) -> None:
    scores = tmp_path / "s.parquet"
    scores.write_text("scores")
    link = tmp_path / "link.parquet"
    link.symlink_to(scores)
    hard = tmp_path / "hard.parquet"
    os.link(scores, hard)
    for output in (scores, link, hard, tmp_path / "sub" / ".." / "s.parquet"):
        with pytest.raises(InputError, match="--out .* is the scores input"):
            fileio.check_distinct({"scores input": scores}, {"--out": output})
    with pytest.raises(InputError, match="--dropped .* and --out .* are the same file"):
        fileio.check_distinct({"scores input": scores}, {"--out": tmp_path / "c.parquet",
                                                          "--dropped": tmp_path / "c.parquet"})
    fileio.check_distinct({"scores input": scores, "embeddings": None},
                          {"--out": tmp_path / "c.parquet", "--dropped": tmp_path / "d.parquet"})
    assert scores.read_text() == "scores"
