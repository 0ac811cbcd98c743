"""
Checkpoints: loaded without running code from the file, and written whole or not at all.

Every checkpoint this project reads (``MODEL.WEIGHTS``, ``MODEL.TBD.TEACHER.WEIGHTS``, ``--resume``)
goes through :class:`SafeCheckpointer`: ``.pkl`` files (detectron2 and Detectron model zoos) with a
restricted unpickler, everything else with ``torch.load(..., weights_only=True)``. Plain ``pickle``
(what detectron2's ``DetectionCheckpointer`` uses for ``.pkl``) runs any code a crafted file names.
:func:`load_eval_model` is how the export, the harmony analysis and the demo load a trained model.
"""

import logging
import os
import pickle
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

__all__ = ["SafeCheckpointer", "AtomicCheckpointer", "UnsafeCheckpointError", "safe_pickle_load"]
__all__ += ["atomic_write", "load_eval_model"]

logger = logging.getLogger(__name__)

# The only globals a model-zoo .pkl may name: numpy arrays, scalars and dtypes (under numpy 1.x and
# 2.x module names), the latin-1 bytes helper pickle protocol 2 writes for array data, and
# OrderedDict. dict, list, tuple, str, bytes, numbers, bool and None need no global.
SAFE_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }
)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint names a Python object that loading it would create or call."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name}: a .pkl checkpoint may hold only numpy arrays, "
                "dicts, lists, tuples, strings, numbers and None"
            )
        return super().find_class(module, name)


def safe_pickle_load(f):
    """``pickle.load(f, encoding="latin1")`` (as detectron2 reads model-zoo files) that refuses
    every global outside :data:`SAFE_PICKLE_GLOBALS` before anything is created or called."""
    return _RestrictedUnpickler(f, encoding="latin1").load()


class SafeCheckpointer(DetectionCheckpointer):
    """
    detectron2's ``DetectionCheckpointer`` (same formats, conversions and key matching), loading
    ``.pkl`` with :func:`safe_pickle_load` and every other file with
    ``torch.load(..., weights_only=True)`` (tensors, containers and primitive types only), stated
    explicitly rather than left to the torch version's default. A file that names anything else
    raises :class:`UnsafeCheckpointError` / ``pickle.UnpicklingError`` naming it.
    Checkpoints written by training (model, optimizer, scheduler, iteration) load this way.
    """

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            try:
                with PathManager.open(filename, "rb") as f:
                    data = safe_pickle_load(f)
            except UnsafeCheckpointError as e:
                raise UnsafeCheckpointError(f"{filename}: {e}") from None
            return self._from_pickle(data)
        if filename.endswith(".pyth"):  # pycls, as DetectionCheckpointer reads it
            data = self._torch_load(filename)
            if "model_state" not in data:
                raise ValueError(f"Cannot load .pyth file {filename}: no 'model_state'")
            state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    @staticmethod
    def _from_pickle(data):
        """DetectionCheckpointer's reading of an unpickled ``.pkl`` (detectron2 or Caffe2 zoo)."""
        if not isinstance(data, dict):
            raise ValueError(f"a .pkl checkpoint must hold a dict, got {type(data).__name__}")
        if "model" in data and "__author__" in data:
            return data
        if "blobs" in data:
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _torch_load(self, f):
        return torch.load(f, map_location=torch.device("cpu"), weights_only=True)


def load_eval_model(cfg, purpose: str = "evaluating"):
    """
    The model of ``cfg`` (``build_model``: a TBDRetinaNet or a RetinaNet) in eval mode with
    ``MODEL.WEIGHTS`` loaded through :class:`SafeCheckpointer`; an empty ``MODEL.WEIGHTS`` is
    warned about (``purpose``: what the caller does with the model, for the message). A
    TBDRetinaNet builds its teacher only in a training step, so no teacher file is read, and its
    teacher config need not exist (then it is an inference-only student, without the TFD adapter).
    """
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        SafeCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning(f"MODEL.WEIGHTS is empty: {purpose} a randomly initialized model")
    return model


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


class AtomicCheckpointer(SafeCheckpointer):
    """
    A :class:`SafeCheckpointer` whose checkpoint files and ``last_checkpoint`` tag are written
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
