"""Datasets: MNIST and the 2D MedMNIST collections at 28x28, the one way the project reads images.

``load_images(dataset, split, label, n, seed)`` returns a float tensor ``(N, C, 28, 28)`` scaled to [-1, 1].

Files are looked up, in order, in ``$QDIFF_DATA_DIR``, the repository's ``data/`` and ``../shared/data`` beside
the checkout (all resolved from the package location, never the working directory). A file is verified against
its official checksum once (MedMNIST's MD5 from ``medmnist.INFO``; MNIST's sha256) and the verdict is cached,
keyed by path, size and modification time. Nothing is written into the data folders except by an explicit
download (``download=True`` or ``QDIFF_DOWNLOAD=1``), which streams into a temporary file in the target
folder, checks it, and only then renames it into place.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qdiff_lib import REPO_ROOT
from qdiff_lib._checks import check_choice
from qdiff_lib._io import atomic_write

__all__ = [
    "DATASETS",
    "ChecksumError",
    "DataNotice",
    "dataset_info",
    "data_dirs",
    "find_file",
    "available_datasets",
    "load_images",
    "load_labelled",
    "few_shot_split",
    "held_out_pool",
    "REFERENCE_POOLS",
    "held_out_split",
    "cache_dir",
    "download_file",
    "to_float",
    "to_uint8",
]

# MNIST: the Keras npz layout (x_train, y_train, x_test, y_test). Two files are accepted: the one in
# ../shared/data (rebuilt losslessly from the official idx files, see its README) and the one served at MNIST_URL.
MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = {
    "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64": "shared/data (rebuilt from the idx files)",
    "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1": MNIST_URL,
}
# The labelled subset of PathMNIST (first 1000 training images), used offline when pathmnist.npz is absent.
PATHMNIST_SUBSET = "pathmnist_train1000.npz"
PATHMNIST_SUBSET_SHA256 = "19806e2986a71f74186521f4981092b71cf0a0d2889688fe30f2d61df6def0be"

MNIST_LABELS = {str(i): str(i) for i in range(10)}


class ChecksumError(ValueError):
    """A data file does not match its official checksum (corrupt, truncated or not the official file)."""


class DataNotice(UserWarning):
    """A visible notice about which data a call actually used (e.g. the PathMNIST subset)."""


def _medmnist_info() -> dict:
    import medmnist  # imported lazily (about 2 s: it pulls pandas and scikit-learn); MNIST never needs it

    return medmnist.INFO


@functools.lru_cache(maxsize=1)
def _datasets() -> tuple[str, ...]:
    flags = [k for k in _medmnist_info() if not k.endswith("3d")]
    return ("mnist", *flags)


#: ``"mnist"`` and the 2D MedMNIST flags. Resolved on first access (module ``__getattr__``), so that importing this
#: module does not import medmnist.
DATASETS: tuple[str, ...]


def __getattr__(name: str):
    """``DATASETS``: ``"mnist"`` and the 2D MedMNIST flags, read from ``medmnist.INFO`` on first access."""
    if name == "DATASETS":
        return _datasets()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    n_channels: int
    n_classes: int
    splits: tuple[str, ...]
    labels: dict[str, str]
    task: str
    filename: str

    def __getitem__(self, key):  # dict-like access for convenience in notebooks
        return getattr(self, key)


def _check_dataset(dataset: str) -> str:
    """The lower-cased name of a known dataset; MNIST is checked without importing medmnist."""
    name = dataset.lower() if isinstance(dataset, str) else dataset
    if name != "mnist":
        check_choice("dataset", name, _datasets())
    return name


def dataset_info(dataset: str) -> DatasetInfo:
    """Channels, classes, splits, label names and file name of ``dataset``."""
    dataset = _check_dataset(dataset)
    if dataset == "mnist":
        return DatasetInfo("mnist", 1, 10, ("train", "test"), MNIST_LABELS, "multi-class", "mnist.npz")
    info = _medmnist_info()[dataset]
    return DatasetInfo(
        dataset,
        int(info["n_channels"]),
        len(info["label"]),
        ("train", "val", "test"),
        dict(info["label"]),
        info["task"],
        f"{dataset}.npz",
    )


# --------------------------------------------------------------------------------------------- locations
def data_dirs() -> list[Path]:
    """The folders searched, in order: ``$QDIFF_DATA_DIR``, ``<repo>/data``, ``<repo>/../shared/data``."""
    dirs = []
    if os.environ.get("QDIFF_DATA_DIR"):
        dirs.append(Path(os.environ["QDIFF_DATA_DIR"]).expanduser().resolve())
    dirs += [REPO_ROOT / "data", (REPO_ROOT.parent / "shared" / "data").resolve()]
    return dirs


def find_file(filename: str) -> Path | None:
    """The first existing ``filename`` in :func:`data_dirs`, or None."""
    for d in data_dirs():
        p = d / filename
        if p.is_file():
            return p
    return None


def cache_dir() -> Path:
    """Where the library caches what it computed (checksum verdicts, trained classifiers): ``$QDIFF_CACHE_DIR``
    when set and not empty, else ``~/.cache/qdiff_lib`` (outside git)."""
    return Path(os.environ.get("QDIFF_CACHE_DIR") or Path.home() / ".cache" / "qdiff_lib").expanduser()


def _download_requested(download: bool) -> bool:
    return bool(download) or os.environ.get("QDIFF_DOWNLOAD", "") not in ("", "0", "false", "False")


# --------------------------------------------------------------------------------------------- checksums
def _expected_checksums(filename: str) -> tuple[str, dict[str, str]]:
    """(algorithm, {digest: provenance}) for a known file name."""
    if filename == "mnist.npz":
        return "sha256", MNIST_SHA256
    if filename == PATHMNIST_SUBSET:
        return "sha256", {PATHMNIST_SUBSET_SHA256: "shared/data subset"}
    flag = filename.removesuffix(".npz")
    info = _medmnist_info()[flag]
    return "md5", {info["MD5"]: info["url"]}


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path) -> None:
    """Check ``path`` against its official checksum, once per (path, size, mtime); raise ChecksumError."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    algorithm, expected = _expected_checksums(path.name)
    cache_file = cache_dir() / "verified.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if cache.get(key) in expected:
        return
    digest = _digest(path, algorithm)
    if digest not in expected:
        raise ChecksumError(
            f"{path} failed its checksum: {algorithm} {digest}, expected {' or '.join(expected)}. "
            "The file is corrupt, truncated or not the official one; delete it and download it again "
            "(load_images(..., download=True))."
        )
    cache[key] = digest
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_file, lambda f: f.write(json.dumps(cache, indent=0, sort_keys=True).encode()))
    except OSError:  # a read-only home only costs a re-hash next time
        pass


# --------------------------------------------------------------------------------------------- download
def _source(filename: str) -> tuple[str, str, str]:
    """(url, algorithm, digest) of the official download for ``filename``."""
    if filename == "mnist.npz":
        return MNIST_URL, "sha256", "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
    info = _medmnist_info()[filename.removesuffix(".npz")]
    return info["url"], "md5", info["MD5"]


def _download_dir() -> Path:
    """Where a download goes: ``$QDIFF_DATA_DIR`` when set, else the repository's ``data/``."""
    return data_dirs()[0] if os.environ.get("QDIFF_DATA_DIR") else REPO_ROOT / "data"


def download_file(filename: str, timeout: float = 60.0, progress: bool = True) -> Path:
    """Fetch ``filename`` from its official source, verify it, and move it into place atomically.

    The bytes stream into a hidden temporary file in the target folder; only a file whose checksum matches is
    renamed to ``filename``. Any failure (network, checksum, interrupt) removes the temporary file.
    """
    from tqdm.auto import tqdm

    url, algorithm, digest = _source(filename)

    def fetch(out) -> None:  # raising here leaves nothing behind (atomic_write removes its temporary file)
        h = hashlib.new(algorithm)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {filename}", disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        if h.hexdigest() != digest:
            raise ChecksumError(
                f"download of {filename} from {url} failed its checksum: {algorithm} {h.hexdigest()}, "
                f"expected {digest}; nothing was written"
            )

    return atomic_write(_download_dir() / filename, fetch)


def _missing_file_error(filename: str) -> FileNotFoundError:
    url, algorithm, digest = _source(filename)
    searched = "\n  ".join(str(d / filename) for d in data_dirs())
    return FileNotFoundError(
        f"{filename} not found. Searched:\n  {searched}\n"
        f"Get it with load_images(..., download=True) or QDIFF_DOWNLOAD=1 (fetches {url}, {algorithm} {digest}), "
        f"or place the file in one of the folders above (or point $QDIFF_DATA_DIR at it)."
    )


# --------------------------------------------------------------------------------------------- reading
@functools.lru_cache(maxsize=8)
def _read_npz(path: str, size: int, mtime_ns: int) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _resolve(dataset: str, split: str, download: bool) -> tuple[Path, dict[str, np.ndarray]]:
    """Locate, verify and read the file behind ``dataset``: (path, arrays)."""
    info = dataset_info(dataset)
    path = find_file(info.filename)
    if path is None:
        subset = _offline_subset(dataset, download)
        if subset is not None:
            if split != "train":
                raise FileNotFoundError(
                    f"pathmnist split {split!r} needs the full pathmnist.npz; only the 1000-image training "
                    f"subset {subset} is available offline (train split only). "
                    "Use download=True (or QDIFF_DOWNLOAD=1) to fetch the full file."
                )
            warnings.warn(
                f"pathmnist.npz not found: using the labelled 1000-image subset of the official training split "
                f"({subset.name}); held-out images must come from the images not used for training.",
                DataNotice,
                stacklevel=4,
            )
            path = subset
    if path is None:
        if not _download_requested(download):
            raise _missing_file_error(info.filename)
        path = download_file(info.filename)
    _verify(path)
    stat = path.stat()
    arrays = _read_npz(str(path), stat.st_size, stat.st_mtime_ns)
    return path, arrays


def _offline_subset(dataset: str, download: bool) -> Path | None:
    """The PathMNIST training subset when it stands in for a missing ``pathmnist.npz`` (no download asked)."""
    if dataset != "pathmnist" or find_file("pathmnist.npz") is not None or _download_requested(download):
        return None
    return find_file(PATHMNIST_SUBSET)


def held_out_split(dataset: str, download: bool = False) -> str:
    """The split that held-out real images of ``dataset`` come from: ``"test"``, or ``"train"`` when only the
    offline PathMNIST training subset is on disk (it has no other split).

    With ``"train"`` the held-out images must be carved out of the training split, disjoint from the images a
    model or classifier trains on: :func:`few_shot_split`, :func:`qdiff_lib.metrics.held_out_reference` and the
    classifier's test images (:mod:`qdiff_lib.classifier`) each do so in their own documented way.
    """
    return "train" if _offline_subset(_check_dataset(dataset), download) is not None else "test"


def _split_arrays(dataset: str, arrays: dict[str, np.ndarray], split: str) -> tuple[np.ndarray, np.ndarray]:
    if dataset == "mnist":
        return arrays[f"x_{split}"], arrays[f"y_{split}"]
    return arrays[f"{split}_images"], arrays[f"{split}_labels"]


def _check_split(dataset: str, split: str) -> None:
    check_choice(f"{dataset} split", split, dataset_info(dataset).splits)


def _check_label(dataset: str, label) -> None:
    n_classes = dataset_info(dataset).n_classes
    if label is None:
        return
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= int(label) < n_classes:
        raise ValueError(f"label {label!r} is not a class of {dataset}; allowed: 0..{n_classes - 1} or None")


def _label_mask(labels: np.ndarray, label: int) -> np.ndarray:
    labels = labels.reshape(len(labels), -1)
    if labels.shape[1] == 1:  # multi-class: one column
        return labels[:, 0] == label
    return labels[:, label] == 1  # multi-label (ChestMNIST): images showing finding `label`


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> float32 ``(N, C, H, W)`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return (x / 127.5 - 1.0).contiguous()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float ``(N, C, H, W)`` in [-1, 1] -> uint8 ``(N, H, W, C)`` (C kept, for plotting and saving)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _select(n_available: int, n: int | None, seed: int, what: str) -> np.ndarray:
    if n is None:
        return np.arange(n_available)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    if n > n_available:
        raise ValueError(
            f"n={n} is larger than the {n_available} images available for {what}; allowed: 1..{n_available}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_available, generator=g)[:n].numpy()


def load_images(
    dataset: str,
    split: str = "train",
    label: int | None = None,
    n: int | None = None,
    seed: int = 0,
    download: bool = False,
) -> torch.Tensor:
    """Images of ``dataset`` as a float tensor ``(N, C, 28, 28)`` in [-1, 1].

    Args:
        dataset: ``"mnist"`` or a 2D MedMNIST flag (see :data:`DATASETS`).
        split: ``"train"``, ``"val"`` or ``"test"`` (MNIST: train/test).
        label: keep only this class (None: all classes).
        n: draw ``n`` images without replacement, deterministically from ``seed`` (None: all, in file order).
        seed: seed of the draw.
        download: fetch a missing file from its official source (also ``QDIFF_DOWNLOAD=1``).
    """
    images, _ = _load(dataset, split, label, n, seed, download)
    return images


def load_labelled(dataset: str, split: str = "train", download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a split with their labels: ``(N, C, 28, 28)`` in [-1, 1] and ``(N,)`` (``(N, K)`` if
    multi-label)."""
    return _load(dataset, split, None, None, 0, download)


def _load(dataset, split, label, n, seed, download) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = _check_dataset(dataset)
    _check_split(dataset, split)
    _check_label(dataset, label)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    _, arrays = _resolve(dataset, split, download)
    images, labels = _split_arrays(dataset, arrays, split)
    idx = np.arange(len(images))
    if label is not None:
        idx = idx[_label_mask(labels, int(label))]
    what = f"{dataset}/{split}" + (f" label {label}" if label is not None else "")
    idx = idx[_select(len(idx), n, seed, what)]
    labels_t = torch.from_numpy(labels[idx].astype(np.int64))
    if labels_t.ndim == 2 and labels_t.shape[1] == 1:
        labels_t = labels_t[:, 0]
    return to_float(images[idx]), labels_t


#: Where :func:`few_shot_split` takes the reference images from: ``"test"`` (the test split, or the unused
#: training images where only the PathMNIST subset is on disk) or ``"held_out"`` (every held-out image of the
#: class: the training images not used for training, and the val and test splits, drawn down to ``n_ref``).
REFERENCE_POOLS = ("test", "held_out")


def few_shot_split(
    dataset: str,
    label: int | None,
    n_train: int,
    n_ref: int | None = None,
    seed: int = 0,
    download: bool = False,
    pool: str = "test",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint real images of class ``label``: ``(train, reference)``.

    ``train`` is ``load_images(dataset, "train", label, n_train, seed)``: the few-shot training set. ``reference``
    holds held-out real images for the metrics, never overlapping ``train``; ``pool`` (:data:`REFERENCE_POOLS`)
    says where they come from:

    * ``"test"``: ``n_ref`` of them (None: all) from the test split when the dataset has one on disk; with only the
      PathMNIST training subset, from the training images that were not used for training (``n_ref`` larger than
      what is left raises ValueError).
    * ``"held_out"``: every held-out image of the class, i.e. the training images not used for training followed
      by the val and test splits present on disk, then ``n_ref`` of them drawn with the seed when there are more
      (``n_ref`` is a cap here: a small class gives all it has). This gives the reference sets of small MedMNIST
      classes their power. Caveat: the training images among them are also the training images of the dataset's
      classifier (:mod:`qdiff_lib.classifier`), whose features the metrics use; generated samples are not.
    """
    dataset = _check_dataset(dataset)
    check_choice("reference pool", pool, REFERENCE_POOLS)
    train = load_images(dataset, "train", label, n_train, seed, download)
    if pool == "held_out":
        return train, _held_out_pool(dataset, label, n_train, n_ref, seed, download)
    if held_out_split(dataset, download) == "test":
        ref_seed = seed + 1_000_003  # independent draw from a disjoint split
        return train, load_images(dataset, "test", label, n_ref, ref_seed, download)
    rest = _unused_training_images(dataset, label, n_train, seed)
    if n_ref is not None:
        if n_ref > len(rest):
            raise ValueError(
                f"n_ref={n_ref} is larger than the {len(rest)} held-out images left after {n_train} training images "
                f"of {dataset} label {label}; allowed: 1..{len(rest)}"
            )
        rest = rest[:n_ref]
    return train, rest


def _unused_training_images(dataset: str, label: int | None, n_train: int, seed: int,
                            download: bool = False) -> torch.Tensor:
    """The training images of the class that ``load_images(dataset, "train", label, n_train, seed)`` did not draw."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataNotice)
        pool = load_images(dataset, "train", label, None, seed, download)
    order = _select(len(pool), len(pool), seed, f"{dataset}/train")  # the same permutation load_images used
    return pool[order[n_train:]]


def held_out_pool(dataset: str, label: int | None, n_train: int = 0, seed: int = 0,
                  download: bool = False) -> torch.Tensor:
    """Every held-out image of class ``label``: the training images that ``load_images(dataset, "train", label,
    n_train, seed)`` did not draw (all of them with ``n_train=0``), followed by the val and test splits present on
    disk (none where only the offline PathMNIST subset is). The pool that :func:`few_shot_split` with
    ``pool="held_out"`` draws a run's reference from, and that the calibration of such runs draws its floor and
    ceiling from (:func:`qdiff_lib.metrics.metric_floor_ceiling` with ``reference_pool="held_out"``)."""
    dataset = _check_dataset(dataset)
    if isinstance(n_train, bool) or not isinstance(n_train, (int, np.integer)) or n_train < 0:
        raise ValueError(f"n_train must be an integer >= 0, got {n_train!r}")
    parts = [_unused_training_images(dataset, label, n_train, seed, download)]
    if held_out_split(dataset, download) == "test":  # the other splits are on disk
        for split in dataset_info(dataset).splits:
            if split != "train":
                parts.append(load_images(dataset, split, label, None, 0, download))
    return torch.cat(parts)


def _held_out_pool(dataset: str, label: int | None, n_train: int, n_ref: int | None, seed: int,
                   download: bool) -> torch.Tensor:
    pool = held_out_pool(dataset, label, n_train, seed, download)
    if n_ref is None or n_ref >= len(pool):
        return pool
    return pool[torch.from_numpy(_select(len(pool), n_ref, seed + 2_000_003, f"{dataset} held-out pool"))]


def available_datasets() -> dict[str, str]:
    """{dataset: path or reason} for every dataset, without reading or verifying the files."""
    out = {}
    for name in _datasets():
        info = dataset_info(name)
        path = find_file(info.filename)
        if path is None and name == "pathmnist":
            path = find_file(PATHMNIST_SUBSET)
        out[name] = str(path) if path is not None else "missing: not in " + ", ".join(map(str, data_dirs()))
    return out
