"""Checkpoints that appear whole or not at all."""

import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer


def atomic_write(path: str, write) -> None:
    """Write ``path`` through ``write(binary_file)`` to a temporary file in the same directory,
    flushed to disk, then renamed over ``path`` (``os.replace`` is atomic on POSIX)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it (mkstemp uses 0600)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class AtomicCheckpointer(DetectionCheckpointer):
    """
    A DetectionCheckpointer whose checkpoint files and ``last_checkpoint`` tag are written
    atomically on local disks: a crash while saving leaves the previous checkpoint and tag intact,
    never a truncated file that ``--resume`` would pick up.
    """

    def _local(self) -> bool:
        return bool(self.save_dir) and os.path.isdir(self.save_dir)

    def save(self, name: str, **kwargs) -> None:
        if not self._local() or not self.save_to_disk:
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local():
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename.encode()))
