"""Checkpoint files written all or nothing, and checked for damage before they are loaded."""

import errno
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from genmodels.engine.rundirs import run_directory
from genmodels.errors import GenmodelsError
from genmodels.files import check_intact, checksum_path, write_with_checksum


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer and reader (`Trainer(plugins=[...])`), made safe.

    Lightning writes a checkpoint to a temporary file in `$TMPDIR` and then moves it over
    the old one: a copy when `$TMPDIR` is on another filesystem (/tmp on tmpfs, runs on a
    data disk), so a full disk or a kill during the copy leaves a truncated `last.ckpt` in
    place of a good one. Here the temporary file is beside the checkpoint, flushed to the
    disk, then renamed over it: the old file stays whole until the new one is. Its
    SHA-256 goes to `<name>.sha256`, and a checkpoint is checked (that checksum and the
    archive's own CRCs) before it is loaded: a damaged one is refused by name.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path) or storage_options is not None:  # remote storage: Lightning's
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_with_checksum(path, lambda file: torch.save(checkpoint, file))
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise GenmodelsError(
                f"The disk is full: could not write {path} ({error.strerror}); the run's "
                f"earlier checkpoints are unchanged. Free some space, then continue with "
                f"resume={run_directory(path)}.") from None

    def load_checkpoint(self, path, *args, **kwargs) -> dict:
        if "://" not in str(path):
            check_intact(path)
        return super().load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        if "://" not in str(path):
            checksum_path(path).unlink(missing_ok=True)
