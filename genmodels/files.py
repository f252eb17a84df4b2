"""Writing files so that a full disk, a kill or a second process never leaves a partial one,
and checking checkpoints for damage before anything trusts them."""

import errno
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from genmodels.errors import GenmodelsError


def user_path(path: str | None) -> str | None:
    """A path as a user writes it: `~` and `$VARIABLES` expanded (Hydra passes them as
    text)."""
    return os.path.expandvars(os.path.expanduser(path)) if path else path


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None],
                     before_rename: Callable[[Path], None] | None = None) -> None:
    """Write `path` through `write(file)`, all or nothing: into a temporary file in the same
    directory (a rename across filesystems would be a copy, cut short by a full disk), which
    is flushed to the disk, passed to `before_rename`, and then renamed over `path`. If
    anything fails, the temporary file is removed and the old `path`, if any, is left as
    it was."""
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        if before_rename is not None:
            before_rename(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def write_text_atomically(path: str | Path, text: str) -> None:
    write_atomically(path, lambda file: file.write(text.encode()))


def sync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename) to the disk, where the OS allows it."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some filesystems do not sync directories
    finally:
        os.close(handle)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(path: str | Path) -> Path:
    """Where the checksum of a checkpoint is kept: `<name>.sha256`, in the format of
    `sha256sum`, so that `sha256sum -c last.ckpt.sha256` checks it too."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_with_checksum(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """`write_atomically`, recording the new file's SHA-256 beside it. Until the file is
    renamed into place the record accepts the old and the new checksum, so that a kill
    between the two renames leaves a pair that still checks."""
    path = Path(path)
    digest = None

    def record_both(temporary: Path) -> None:
        nonlocal digest
        digest = sha256_of(temporary)
        lines = dict.fromkeys([*recorded_checksums(path), digest])
        write_text_atomically(checksum_path(path), "".join(f"{d}  {path.name}\n" for d in lines))

    write_atomically(path, write, before_rename=record_both)
    write_text_atomically(checksum_path(path), f"{digest}  {path.name}\n")


def recorded_checksums(path: Path) -> list[str]:
    try:
        lines = checksum_path(path).read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    return [line.split()[0] for line in lines if line.split()]


# Files found intact, as (path, size, modification time): a resume checks its checkpoint
# when it picks it, before training and when Lightning loads it, and each check reads
# every byte; a file written again gets another modification time and is checked again.
_found_intact: set[tuple[str, int, int]] = set()


def check_intact(path: str | Path) -> None:
    """Raise GenmodelsError naming `path` as damaged if it is empty, is not a whole zip
    archive (what torch.save writes), fails one of the archive's own CRC-32 checks, or
    does not match the SHA-256 recorded when it was written (`<name>.sha256`). The
    recorded checksum, where there is one, covers every byte; the CRCs check the others.
    A file found intact before, unchanged since, is not read again."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _found_intact:
        return
    problem = None
    if stat.st_size == 0:
        problem = "it is empty"
    elif expected := recorded_checksums(path):
        if sha256_of(path) not in expected:
            problem = f"its SHA-256 differs from the one recorded in {checksum_path(path).name}"
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                bad_member = archive.testzip()
            if bad_member is not None:
                problem = f"its part {bad_member!r} fails its CRC check"
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            problem = f"it is not a whole checkpoint archive ({error})"
    if problem is not None:
        raise GenmodelsError(f"Checkpoint {path} is damaged: {problem}.")
    _found_intact.add(key)


def make_output_folder(folder: Path) -> None:
    """Create the folder the outputs go to, or say in one sentence why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, "Permission denied")
    except OSError as error:
        raise GenmodelsError(f"Cannot write to {folder} ({error.strerror}): give "
                             "out=<a path in a folder you can write>.") from None


def check_working_directory() -> None:
    """One sentence when the folder a command runs in was deleted (or moved) under the
    shell: relative paths (logs/, data/) lead nowhere, and PyTorch's libraries fail to
    load from there. The scripts check it before importing PyTorch."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise GenmodelsError("The working directory no longer exists (deleted or moved since "
                             "the shell entered it): cd to an existing folder and run "
                             "again.") from None
