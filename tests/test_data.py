"""The data step: Fashion-MNIST is used only when its four files match their checksums,
and anything else stops with a message that says how to fix it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "chapters"))
import genbook  # noqa: E402

REAL_RAW = ROOT / "data" / "FashionMNIST" / "raw"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and no Debian package: only what is in the folder counts."""
    def no_download(root):
        raise OSError("network unreachable (test)")
    monkeypatch.setattr(genbook, "_from_torchvision", no_download)
    monkeypatch.setattr(genbook, "DEBIAN_DIR", tmp_path / "no-such-package")


@pytest.fixture
def copy_of_data(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in genbook.FASHION_MNIST_SHA256:
        shutil.copy(REAL_RAW / name, raw / name)
    return tmp_path


def test_the_checked_out_data_matches_its_checksums():
    assert genbook.check_fashion_mnist(ROOT / "data") is None


def test_a_good_copy_passes(copy_of_data, offline):
    assert genbook.ensure_fashion_mnist(copy_of_data, log=lambda *_: None) == copy_of_data


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "delete"])
def test_a_damaged_copy_is_refused_with_instructions(copy_of_data, offline, damage):
    target = copy_of_data / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":
        target.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        target.unlink()
    with pytest.raises(genbook.DataError) as err:
        genbook.ensure_fashion_mnist(copy_of_data, log=lambda *_: None)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte" in message
    assert "make data" in message and "apt-get install dataset-fashion-mnist" in message
    assert "never substitutes other data" in message


def test_a_damaged_copy_is_replaced_from_the_debian_package(copy_of_data, monkeypatch):
    if not Path("/usr/share/datasets/fashion-mnist").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    monkeypatch.setattr(genbook, "_from_torchvision", lambda root: (_ for _ in ()).throw(OSError("offline")))
    target = copy_of_data / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"
    target.write_bytes(target.read_bytes()[:1000])
    genbook.ensure_fashion_mnist(copy_of_data, log=lambda *_: None)
    assert genbook.check_fashion_mnist(copy_of_data) is None


def test_the_command_line_fails_loudly(tmp_path):
    env = {"GENBOOK_DATA": str(tmp_path / "empty"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = (
        "import sys, genbook; genbook._from_torchvision = lambda r: (_ for _ in ()).throw(OSError('offline'));"
        f"genbook.DEBIAN_DIR = genbook.Path({str(tmp_path / 'none')!r}); sys.exit(genbook.main(['data']))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "chapters", env=env,
                         capture_output=True, text=True)
    assert run.returncode == 1
    assert "Fashion-MNIST is missing or damaged" in run.stderr and "make data" in run.stderr


@pytest.mark.parametrize("cwd", [ROOT, ROOT / "chapters", ROOT / "tests"])
def test_notebooks_find_the_same_data_from_anywhere(cwd, monkeypatch):
    monkeypatch.delenv("GENBOOK_DATA", raising=False)
    code = "import sys; sys.path.insert(0, %r); import genbook; print(genbook.data_root())" % str(ROOT / "chapters")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == ROOT / "data"


def test_loaded_tensors_have_the_documented_shape():
    x, y = genbook.load_fashion_mnist(train=False)
    assert tuple(x.shape) == (10000, 1, 28, 28) and tuple(y.shape) == (10000,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(y.unique().tolist()) == list(range(10))
