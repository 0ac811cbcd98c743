"""The detectron2 installer (tools/install_detectron2.py) and what it installed."""

import base64
import hashlib
import importlib.metadata
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO

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
