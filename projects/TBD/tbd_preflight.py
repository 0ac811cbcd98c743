"""
The teacher-file check of a training command, run before torch is imported.

``train_net.py`` calls :func:`check_teacher_paths` before its first heavy import, so that a wrong
``MODEL.TBD.TEACHER.WEIGHTS`` or ``MODEL.TBD.TEACHER.CONFIG_FILE`` is refused in a fraction of a
second instead of after importing torch and detectron2 (3 s on a fast 2-core host, three times
that on a slow one). It is a module of its own, outside the ``tbd`` package, because importing
``tbd`` imports torch.

It reads the config as detectron2 does (the ``_BASE_`` chain of yaml files, each overriding its
bases, then the ``KEY VALUE`` opts, each value decoded as a Python literal when it is one), but only
the keys in :data:`DEFAULTS`, and it refuses only what it is sure of: a local path that is not a
file. Whatever it cannot decide (a model-zoo config name or URL as ``--config-file``, a config it
cannot parse, a command-line flag it does not know) it leaves to the full check,
``tbd.teacher.check_teacher_files``, which ``train_net.main`` runs next, before any dataset.
"""

import argparse
import ast
import importlib.util
import os
from typing import Any, Dict, List, Optional

import yaml

# The keys that decide what is checked, with their defaults (detectron2's and tbd/config.py's;
# tests/test_preflight.py compares them with the real config).
DEFAULTS: Dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.TBD.HD.ENABLED": True,
    "MODEL.TBD.TFD.ENABLED": True,
    "MODEL.TBD.TEACHER.CONFIG_FILE": "",
    "MODEL.TBD.TEACHER.WEIGHTS": "",
}


class _Loader(yaml.SafeLoader):
    """yaml's safe loader that reads any tag it does not know (such as the
    ``!!python/object/apply:eval`` of detectron2's COCO configs) as None: none of the keys read
    here is written that way, and nothing in the file runs."""


_Loader.add_multi_constructor("", lambda loader, tag, node: None)


class Undecided(Exception):
    """The command or config is one this module does not read; the full check decides."""


def _parser() -> argparse.ArgumentParser:
    """The flags of detectron2's ``default_argument_parser`` and of train_net.py."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config-file", default="")
    p.add_argument("--eval-only", action="store_true")
    for flag in ("--resume", "--default-malloc"):
        p.add_argument(flag, action="store_true")
    for flag in ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url"):
        p.add_argument(flag)
    p.add_argument("opts", nargs=argparse.REMAINDER)
    return p


def _load_yaml_with_base(path: str) -> dict:
    """The yaml at ``path`` merged over its ``_BASE_`` files (one or a list, relative to it)."""
    if "://" in path or not os.path.isfile(path):
        raise Undecided(path)
    with open(path) as f:
        cfg = yaml.load(f, Loader=_Loader) or {}
    bases = cfg.pop("_BASE_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base = os.path.expanduser(base)
        if not base.startswith("/") and "://" not in base:
            base = os.path.join(os.path.dirname(path), base)
        _merge(_load_yaml_with_base(base), merged)
    _merge(cfg, merged)
    return merged


def _merge(a: dict, b: dict) -> None:
    """Merge ``a`` into ``b``; values of ``a`` win."""
    for k, v in a.items():
        if isinstance(v, dict) and isinstance(b.get(k), dict):
            _merge(v, b[k])
        else:
            b[k] = v


def _decode(value: Any) -> Any:
    """A command-line value as detectron2 decodes it: a Python literal when it is one."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def read_keys(config_file: str, opts: List[str]) -> Dict[str, Any]:
    """The values of :data:`DEFAULTS`' keys after ``config_file`` and ``opts`` are merged."""
    if len(opts) % 2:
        raise Undecided("odd number of opts")
    cfg = _load_yaml_with_base(config_file)
    values = {}
    for key, default in DEFAULTS.items():
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part, default) if isinstance(node, dict) else default
        values[key] = node
    for key, value in zip(opts[::2], opts[1::2]):
        if key in values:
            values[key] = _decode(value)
    return values


def _model_zoo_config(name: str) -> Optional[bool]:
    """Whether ``name`` is a config of detectron2's model zoo; None when its zoo is not found."""
    spec = importlib.util.find_spec("detectron2")  # finds the package without importing it
    for root in (spec.submodule_search_locations or []) if spec else []:
        zoo = os.path.join(root, "model_zoo", "configs")
        if os.path.isdir(zoo):
            return os.path.isfile(os.path.join(zoo, name))
    return None


def check_teacher_paths(argv: List[str]) -> None:
    """
    For a training command (``argv`` without the program name) whose config distills (a
    ``TBDRetinaNet`` with HD or TFD enabled), raise FileNotFoundError, naming the key and the
    path, when ``TEACHER.WEIGHTS`` is a local path that is not a file, or ``TEACHER.CONFIG_FILE``
    is neither a file nor a model-zoo config name. Everything else passes (see the module doc).
    """
    args, unknown = _parser().parse_known_args(argv)
    if unknown or args.eval_only:
        return
    try:
        v = read_keys(args.config_file, args.opts)
    except (Undecided, OSError, yaml.YAMLError):
        return
    tbd = "MODEL.TBD."
    if v["MODEL.META_ARCHITECTURE"] != "TBDRetinaNet" or not (
        v[tbd + "HD.ENABLED"] or v[tbd + "TFD.ENABLED"]
    ):
        return
    weights, config = v[tbd + "TEACHER.WEIGHTS"], v[tbd + "TEACHER.CONFIG_FILE"]
    if isinstance(weights, str) and weights and "://" not in weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"{tbd}TEACHER.WEIGHTS={weights!r}: no such file")
    if isinstance(config, str) and config and not os.path.isfile(config):
        if _model_zoo_config(config) is False:
            raise FileNotFoundError(
                f"{tbd}TEACHER.CONFIG_FILE={config!r} is neither a file nor a detectron2 "
                "model-zoo config name"
            )
