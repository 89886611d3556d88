"""qdiff_lib.data: shapes, range, determinism, every bad input, checksums, missing files, the download path."""

from __future__ import annotations

import hashlib
import http.server
import threading
import warnings
from pathlib import Path

import medmnist
import numpy as np
import pytest
import torch

from qdiff_lib import data
from qdiff_lib.data import ChecksumError, DataNotice, few_shot_split, load_images, load_labelled

SHARED = Path(data.__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty $QDIFF_DATA_DIR first in the search path and a private cache; downloads off."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("QDIFF_DATA_DIR", str(data_dir))
    monkeypatch.setenv("QDIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QDIFF_DOWNLOAD", raising=False)
    return data_dir


def make_medmnist_npz(path: Path, n_per_split=(12, 4, 6), n_classes=3, rgb=False, seed=0) -> bytes:
    """A small file in MedMNIST's own layout (train/val/test _images uint8, _labels (N, 1))."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), n_per_split, strict=True):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % n_classes).astype(np.uint8).reshape(n, 1)
    np.savez_compressed(path, **arrays)
    return path.read_bytes()


# ------------------------------------------------------------------------------------------ real data
def test_mnist_shapes_range_and_label():
    x = load_images("mnist", label=3, n=64, seed=0)
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    _, labels = load_labelled("mnist", "test")
    assert labels.shape == (10000,) and set(labels.unique().tolist()) == set(range(10))


def test_label_selection_is_that_class():
    raw = np.load(SHARED / "mnist.npz")
    x = load_images("mnist", "test", label=7)
    expected = raw["x_test"][raw["y_test"] == 7]
    assert x.shape[0] == len(expected)
    assert torch.equal(x[:, 0], torch.from_numpy(expected).float() / 127.5 - 1)


def test_draw_is_deterministic_and_seed_dependent():
    a = load_images("mnist", label=1, n=16, seed=5)
    b = load_images("mnist", label=1, n=16, seed=5)
    c = load_images("mnist", label=1, n=16, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dataset,channels", [("retinamnist", 3), ("breastmnist", 1), ("pneumoniamnist", 1)])
def test_medmnist_shared_files(dataset, channels):
    for split in ("train", "val", "test"):
        x = load_images(dataset, split, n=5)
        assert x.shape == (5, channels, 28, 28)
        assert -1 <= x.min() and x.max() <= 1


def test_pathmnist_offline_uses_subset_with_notice():
    with pytest.warns(DataNotice, match="1000-image subset"):
        x = load_images("pathmnist", label=1, n=20, seed=0)
    assert x.shape == (20, 3, 28, 28)
    with pytest.raises(FileNotFoundError, match="training\\s+subset"):
        load_images("pathmnist", "test", label=1)


def test_few_shot_split_disjoint_for_subset_and_test_split():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataNotice)
        train, ref = few_shot_split("pathmnist", 1, n_train=64, n_ref=40, seed=0)
        again, _ = few_shot_split("pathmnist", 1, n_train=64, n_ref=40, seed=0)
    assert train.shape == (64, 3, 28, 28) and ref.shape == (40, 3, 28, 28)
    assert torch.equal(train, again)
    flat_t, flat_r = train.flatten(1), ref.flatten(1)
    assert not (torch.cdist(flat_r, flat_t).min(dim=1).values == 0).any()
    tr, rf = few_shot_split("mnist", 0, n_train=10, n_ref=20, seed=1)
    assert torch.equal(tr, load_images("mnist", "train", 0, 10, 1)) and rf.shape == (20, 1, 28, 28)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(dataset="cifar10"), r"unknown dataset 'cifar10'; allowed: \['mnist', 'pathmnist'"),
        (dict(dataset="organmnist3d"), r"unknown dataset"),
        (dict(dataset="mnist", split="val"), r"unknown mnist split 'val'; allowed: \['train', 'test'\]"),
        (dict(dataset="breastmnist", split="dev"), r"allowed: \['train', 'val', 'test'\]"),
        (dict(dataset="mnist", label=10), r"label 10 is not a class of mnist; allowed: 0..9"),
        (dict(dataset="breastmnist", label=-1), r"allowed: 0..1"),
        (dict(dataset="mnist", label=True), r"label True"),
        (dict(dataset="mnist", n=0), r"n must be a positive integer"),
        (dict(dataset="mnist", label=0, n=10**6), r"n=1000000 is larger than the 5923 images available"),
    ],
)
def test_bad_inputs_name_value_and_allowed(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_images(**kwargs)


# ------------------------------------------------------------------------------------------ files and checksums
def test_missing_file_names_file_places_and_remedy(env, monkeypatch):
    monkeypatch.setattr(data, "data_dirs", lambda: [env])
    with pytest.raises(FileNotFoundError) as err:
        load_images("bloodmnist")
    msg = str(err.value)
    assert "bloodmnist.npz not found" in msg and str(env / "bloodmnist.npz") in msg
    assert "download=True" in msg and medmnist.INFO["bloodmnist"]["url"] in msg
    assert list(env.iterdir()) == []  # nothing written without an explicit download


def test_corrupt_file_is_refused(env):
    good = (SHARED / "breastmnist.npz").read_bytes()
    (env / "breastmnist.npz").write_bytes(good[:-100] + bytes(100))
    with pytest.raises(ChecksumError, match="failed its checksum.*corrupt"):
        load_images("breastmnist")


def test_checksum_verified_once_then_cached(env, monkeypatch):
    (env / "breastmnist.npz").write_bytes((SHARED / "breastmnist.npz").read_bytes())
    calls = []
    real_digest = data._digest
    monkeypatch.setattr(data, "_digest", lambda p, a: calls.append(p) or real_digest(p, a))
    load_images("breastmnist", n=3)
    data._read_npz.cache_clear()
    load_images("breastmnist", n=3)
    assert len(calls) == 1


def test_data_dir_env_takes_precedence(env, monkeypatch):
    # a valid-looking file in $QDIFF_DATA_DIR wins over the shared one and is checksummed against MedMNIST's MD5
    payload = make_medmnist_npz(env / "breastmnist.npz")
    monkeypatch.setitem(medmnist.INFO["breastmnist"], "MD5", hashlib.md5(payload).hexdigest())
    x = load_images("breastmnist", "val")
    assert x.shape == (4, 1, 28, 28)


# ------------------------------------------------------------------------------------------ download path
class _Server:
    """Serve files from a folder on loopback (a stand-in for the official host, same file format)."""

    def __init__(self, root: Path):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a, **k: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "remote"
    root.mkdir()
    s = _Server(root)
    s.root = root
    yield s
    s.close()


def test_download_fetches_verifies_and_loads(env, server, monkeypatch):
    payload = make_medmnist_npz(server.root / "bloodmnist.npz", rgb=True, n_classes=8)
    monkeypatch.setitem(medmnist.INFO["bloodmnist"], "url", f"{server.url}/bloodmnist.npz")
    monkeypatch.setitem(medmnist.INFO["bloodmnist"], "MD5", hashlib.md5(payload).hexdigest())
    x = load_images("bloodmnist", "train", download=True)
    assert x.shape == (12, 3, 28, 28)
    assert (env / "bloodmnist.npz").read_bytes() == payload
    assert sorted(p.name for p in env.iterdir()) == ["bloodmnist.npz"]  # no temporary file left


def test_download_via_environment_variable(env, server, monkeypatch):
    payload = make_medmnist_npz(server.root / "dermamnist.npz", rgb=True)
    monkeypatch.setitem(medmnist.INFO["dermamnist"], "url", f"{server.url}/dermamnist.npz")
    monkeypatch.setitem(medmnist.INFO["dermamnist"], "MD5", hashlib.md5(payload).hexdigest())
    monkeypatch.setenv("QDIFF_DOWNLOAD", "1")
    assert load_images("dermamnist", "test", label=2).shape == (2, 3, 28, 28)


def test_failed_download_leaves_no_file(env, server, monkeypatch):
    make_medmnist_npz(server.root / "bloodmnist.npz")
    monkeypatch.setitem(medmnist.INFO["bloodmnist"], "url", f"{server.url}/bloodmnist.npz")
    monkeypatch.setitem(medmnist.INFO["bloodmnist"], "MD5", "0" * 32)  # wrong checksum
    with pytest.raises(ChecksumError, match="nothing was written"):
        load_images("bloodmnist", download=True)
    assert list(env.iterdir()) == []
    monkeypatch.setitem(medmnist.INFO["bloodmnist"], "url", f"{server.url}/missing.npz")  # HTTP 404
    with pytest.raises(OSError):
        load_images("bloodmnist", download=True)
    assert list(env.iterdir()) == []
