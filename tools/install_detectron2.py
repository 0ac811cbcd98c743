#!/usr/bin/env python3
"""
Install detectron2 into the running Python environment.

detectron2 is not published on PyPI under its own name. This script tries, in order:

``auto`` (default)
    1. keep an importable detectron2 as it is, unless it is an earlier repack by this script (see
       ``registry``), which is replaced;
    2. the official source build from GitHub (compiles detectron2's C++/CUDA ops), skipped after a
       short connection check when GitHub cannot be reached;
    3. the registry route below.
``official``
    only the official source build.
``registry``
    only the registry route: the PyPI wheel ``sal-detectron2==0.7.2`` whose ``detectron2/`` package
    is upstream detectron2 (commit a59f0563, 2024-04-17) plus two small fixes, and a ``_C`` binary
    built for CPython 3.10. The wheel is verified against a pinned sha256, its ``_C`` binary is
    dropped (CPython 3.11+ never loads it; upstream detectron2 imports without it), and the pure
    Python package is repacked and installed as a distribution named ``detectron2`` so that
    ``pip show detectron2`` and ``importlib.metadata.version("detectron2")`` answer, with the
    requirements in ``REGISTRY_REQUIRES``.
    Without ``_C``: deformable convolution, rotated-box ops and the fast C++ COCO evaluator are
    missing (``COCOEvaluator`` falls back to pycocotools with the same numbers).
    RetinaNet needs none of them.

Usage::

    python tools/install_detectron2.py [--mode auto|official|registry] [--cache-dir DIR]
"""

import argparse
import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import zipfile

OFFICIAL_URL = "git+https://github.com/facebookresearch/detectron2.git"
REGISTRY_REQUIREMENT = "sal-detectron2==0.7.2"
REGISTRY_WHEEL = "sal_detectron2-0.7.2-cp310-none-any.whl"
REGISTRY_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
# The distribution we install. The local label says where it came from (the sal-detectron2 wheel,
# upstream commit a59f0563) and, last, the revision of the metadata below: bump it whenever
# REGISTRY_REQUIRES changes. An installed repack whose version or requirements differ from these is
# replaced (see installed_repack_outdated), so `make setup` updates an existing environment.
REPACK_LABEL = "+sal."
REPACKED_VERSION = "0.7.2+sal.a59f0563.2"
# Runtime requirements: those of the wheel's metadata except its numpy<2, plus what it forgets
# (fvcore, iopath) and what it needs on current Python (setuptools<81 for pkg_resources in
# detectron2.model_zoo; OpenCV for detectron2.utils.visualizer).
# - No numpy pin: upstream detectron2 declares none, and sal-detectron2's numpy<2 (no reason given)
#   is not needed by the pure-Python package: it and this project's test suite pass with numpy 2
#   (2.4), which torchvision and the dev extra (onnx, via ml_dtypes) install anyway.
# - OpenCV <4.11 keeps 4.10.0.84, the version tested (with numpy 2; detectron2.utils.visualizer
#   draws the demo's figure, tests/test_demo.py).
REGISTRY_REQUIRES = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "black",
    "packaging",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "setuptools<81",
    "opencv-python-headless<4.11",
]


def log(msg):
    print(f"[install_detectron2] {msg}", flush=True)


def pip(*args):
    cmd = [sys.executable, "-m", "pip", *args]
    log(" ".join(cmd))
    return subprocess.run(cmd).returncode


def detectron2_importable():
    if importlib.util.find_spec("detectron2") is None:
        return False
    # A fresh interpreter, so that a half-installed package from this process does not count.
    probe = "import detectron2, detectron2.modeling, detectron2.engine"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def installed_repack_outdated():
    """
    The version of the installed ``detectron2`` distribution when it is an earlier repack by this
    script (its version has the ``+sal.`` label, and it or its requirements differ from
    ``REPACKED_VERSION`` and ``REGISTRY_REQUIRES``); else None. Any other detectron2 (the official
    build, a user's own) is never reported, so it is kept.
    """
    try:
        dist = importlib.metadata.distribution("detectron2")
    except importlib.metadata.PackageNotFoundError:
        return None
    version = dist.version
    if REPACK_LABEL not in version:
        return None
    if version == REPACKED_VERSION and list(dist.requires or []) == REGISTRY_REQUIRES:
        return None
    return version


def github_reachable(timeout=5.0):
    try:
        with socket.create_connection(("github.com", 443), timeout=timeout):
            return True
    except OSError:
        return False


def install_official():
    if not github_reachable():
        log("github.com is not reachable: skipping the official source build")
        return False
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", OFFICIAL_URL]
    log(" ".join(cmd))
    return subprocess.run(cmd, env=env).returncode == 0


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_registry_wheel(cache_dir):
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, REGISTRY_WHEEL)
    if not os.path.exists(path):
        rc = pip(
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.10",
            "--dest",
            cache_dir,
            REGISTRY_REQUIREMENT,
        )
        if rc != 0 or not os.path.exists(path):
            raise RuntimeError(f"could not download {REGISTRY_REQUIREMENT} from the package index")
    digest = sha256_of(path)
    if digest != REGISTRY_SHA256:
        os.remove(path)
        raise RuntimeError(
            f"{REGISTRY_WHEEL}: sha256 {digest} does not match the pinned {REGISTRY_SHA256}; "
            "refusing to install it (the file was removed from the cache)"
        )
    log(f"verified {REGISTRY_WHEEL} (sha256 {digest[:16]}...)")
    return path


def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack_as_detectron2(source_wheel, out_dir):
    """Write a pure-Python wheel named ``detectron2`` holding the source wheel's ``detectron2/``
    package without its compiled ``_C`` extension. Returns the new wheel's path."""
    dist_info = f"detectron2-{REPACKED_VERSION}.dist-info"
    metadata = [
        "Metadata-Version: 2.1",
        "Name: detectron2",
        f"Version: {REPACKED_VERSION}",
        "Summary: detectron2 (pure Python, repacked from sal-detectron2 0.7.2)",
        "Home-page: https://github.com/facebookresearch/detectron2",
        "License: Apache-2.0",
        "Requires-Python: >=3.8",
    ]
    metadata = "\n".join(metadata + [f"Requires-Dist: {r}" for r in REGISTRY_REQUIRES])
    wheel_meta = (
        "Wheel-Version: 1.0\nGenerator: tbd-detectron2\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    out_path = os.path.join(out_dir, f"detectron2-{REPACKED_VERSION}-py3-none-any.whl")
    records = []
    with (
        zipfile.ZipFile(source_wheel) as src,
        zipfile.ZipFile(out_path, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        kept = 0
        for info in src.infolist():
            name = info.filename
            if not name.startswith("detectron2/") or name.endswith("/"):
                continue
            if os.path.basename(name).startswith("_C.") and name.endswith(".so"):
                continue
            data = src.read(info)
            dst.writestr(name, data)
            records.append(_record_line(name, data))
            kept += 1
        if kept == 0:
            raise RuntimeError(f"{source_wheel} holds no detectron2/ package")
        for member in ("LICENSE",):
            licence = [n for n in src.namelist() if n.endswith(f".dist-info/{member}")]
            if licence:
                data = src.read(licence[0])
                dst.writestr(f"{dist_info}/{member}", data)
                records.append(_record_line(f"{dist_info}/{member}", data))
        for name, text in (
            (f"{dist_info}/METADATA", metadata + "\n"),
            (f"{dist_info}/WHEEL", wheel_meta),
            (f"{dist_info}/top_level.txt", "detectron2\n"),
        ):
            data = text.encode()
            dst.writestr(name, data)
            records.append(_record_line(name, data))
        records.append(f"{dist_info}/RECORD,,")
        dst.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    log(f"repacked {kept} files of detectron2/ into {os.path.basename(out_path)}")
    return out_path


def install_registry(cache_dir):
    wheel = download_registry_wheel(cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        repacked = repack_as_detectron2(wheel, tmp)
        # The wheel installs over any distribution of the same name and another version; an
        # earlier repack of the same version (metadata changed without a new label) goes first.
        if installed_repack_outdated() == REPACKED_VERSION:
            pip("uninstall", "-y", "detectron2")
        return pip("install", repacked) == 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["auto", "official", "registry"], default="auto")
    parser.add_argument(
        "--cache-dir",
        default=os.path.join(os.path.expanduser("~"), ".cache", "tbd-detectron2"),
        help="where the downloaded registry wheel is kept between runs",
    )
    args = parser.parse_args(argv)

    outdated = installed_repack_outdated()
    if outdated:
        log(f"detectron2 {outdated} is an earlier repack by this script: replacing it")
    elif args.mode == "auto" and detectron2_importable():
        log("detectron2 is already importable: nothing to do")
        return 0
    ok = False
    if args.mode in ("auto", "official"):
        ok = install_official()
        if not ok and args.mode == "official":
            log("the official source build failed")
            return 1
    if not ok and args.mode in ("auto", "registry"):
        ok = install_registry(args.cache_dir)
    if not ok or not detectron2_importable():
        log("detectron2 is still not importable")
        return 1
    log("detectron2 is installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
