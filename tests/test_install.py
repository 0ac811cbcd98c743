"""The detectron2 installer (tools/install_detectron2.py) and what it installed."""

import base64
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO
from packaging.requirements import Requirement

sys.path.insert(0, os.path.join(REPO, "tools"))
import install_detectron2 as installer  # noqa: E402


def test_detectron2_is_an_installed_distribution():
    assert importlib.metadata.version("detectron2")
    out = subprocess.run(
        [sys.executable, "-m", "detectron2.utils.collect_env"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "detectron2" in out.stdout


def _fake_source_wheel(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("detectron2/__init__.py", "__version__ = 'x'\n")
        z.writestr("detectron2/model_zoo/configs/a.yaml", "MODEL: {}\n")
        z.writestr("detectron2/_C.cpython-310-x86_64-linux-gnu.so", b"\x7fELF")
        z.writestr("tools/train_net.py", "")
        z.writestr("sal_detectron2-0.7.2.dist-info/LICENSE", "Apache")


def test_repack_drops_binary_and_writes_valid_record(tmp_path):
    source = tmp_path / "source.whl"
    _fake_source_wheel(source)
    wheel = installer.repack_as_detectron2(str(source), str(tmp_path))
    assert os.path.basename(wheel).startswith(f"detectron2-{installer.REPACKED_VERSION}-py3")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        dist = f"detectron2-{installer.REPACKED_VERSION}.dist-info"
        assert "detectron2/__init__.py" in names
        assert "detectron2/model_zoo/configs/a.yaml" in names  # package data kept
        assert not any("_C." in n or n.startswith("tools/") for n in names)
        metadata = z.read(f"{dist}/METADATA").decode()
        assert "Name: detectron2" in metadata and "Requires-Dist: fvcore" in metadata
        for line in z.read(f"{dist}/RECORD").decode().splitlines():
            name, digest, size = line.split(",")
            if not digest:
                continue
            data = z.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + expected.decode() and int(size) == len(data)


def test_registry_wheel_with_wrong_hash_is_refused(tmp_path):
    wheel = tmp_path / installer.REGISTRY_WHEEL
    wheel.write_bytes(b"not the pinned wheel")
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        installer.download_registry_wheel(str(tmp_path))
    assert not wheel.exists()  # removed from the cache


def _requires_dist(wheel):
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(f"detectron2-{installer.REPACKED_VERSION}.dist-info/METADATA").decode()
    prefix = "Requires-Dist: "
    return [line[len(prefix) :] for line in metadata.splitlines() if line.startswith(prefix)]


def test_repacked_requirements_admit_what_is_installed(tmp_path):
    """
    Every requirement the repacked distribution declares is met by this environment, where the
    suite runs: ``pip check`` (run by ``make setup``) then passes. The sal wheel's own ``numpy<2``
    did not hold here: torchvision and the dev extra (onnx -> ml_dtypes) install numpy 2.
    Only meaningful where detectron2 is this installer's repack (the official build has its own
    metadata); and that repack must be the current one, or ``make setup`` did not update it.
    """
    version = importlib.metadata.version("detectron2")
    if installer.REPACK_LABEL not in version:
        pytest.skip(f"detectron2 {version} is not the registry route's repack: its own metadata")
    assert (
        installer.installed_repack_outdated() is None
    ), f"detectron2 {version} is an earlier repack: run make setup"
    source = tmp_path / "source.whl"
    _fake_source_wheel(source)
    declared = _requires_dist(installer.repack_as_detectron2(str(source), str(tmp_path)))
    assert declared == installer.REGISTRY_REQUIRES
    assert importlib.metadata.requires("detectron2") == declared
    unmet = []
    for line in declared:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        installed = importlib.metadata.version(req.name)  # a missing one raises: unmet too
        if not req.specifier.contains(installed, prereleases=True):
            unmet.append(f"{line} (installed: {installed})")
    assert unmet == []


class _Dist:
    def __init__(self, version, requires):
        self.version, self.requires = version, requires


@pytest.mark.parametrize(
    "version, requires, outdated",
    [
        (installer.REPACKED_VERSION, installer.REGISTRY_REQUIRES, False),  # current: kept
        ("0.7.2+sal.a59f0563", installer.REGISTRY_REQUIRES + ["numpy<2"], True),  # the old one
        (installer.REPACKED_VERSION, ["numpy<2"], True),  # metadata changed without a new label
        ("0.6", ["numpy<2"], False),  # the official build, or a user's own: never touched
    ],
)
def test_earlier_repack_is_reported_and_others_are_kept(monkeypatch, version, requires, outdated):
    monkeypatch.setattr(
        installer.importlib.metadata, "distribution", lambda name: _Dist(version, requires)
    )
    assert installer.installed_repack_outdated() == (version if outdated else None)


def test_auto_mode_replaces_an_earlier_repack_and_keeps_the_current_one(monkeypatch):
    calls = []
    monkeypatch.setattr(installer, "detectron2_importable", lambda: True)
    monkeypatch.setattr(installer, "install_official", lambda: calls.append("official"))
    monkeypatch.setattr(installer, "install_registry", lambda cache: calls.append("registry") or 1)
    monkeypatch.setattr(installer, "installed_repack_outdated", lambda: None)
    assert installer.main(["--mode", "auto"]) == 0 and calls == []
    monkeypatch.setattr(installer, "installed_repack_outdated", lambda: "0.7.2+sal.a59f0563")
    assert installer.main(["--mode", "auto"]) == 0 and calls == ["official", "registry"]


def test_make_setup_ends_with_pip_check(tmp_path):
    """``make setup`` (run by ``make test``, hence by CI) runs ``pip check`` after installing
    everything and before marking the environment as set up."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"  # does not exist: make prints the whole setup recipe
    # not the variables of a calling make (`make test VENV=...` passes them in MAKEFLAGS)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(
        ["make", "-n", "setup", f"VENV={venv}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()

    def index(fragment):
        return next(i for i, line in enumerate(lines) if fragment in line)

    check = index(f"{venv}/bin/python -m pip check")
    assert index("tools/install_detectron2.py") < index("pip install -q -e") < check
    assert check < index(f"touch {venv}/.tbd-setup-done")
