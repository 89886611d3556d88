"""A small CNN classifier per dataset: the feature space of the companion's metrics.

The paper measures FID with Inception-v3 features of 13 images cropped from a saved figure (defect 4 in the book's
introduction, ``intro.md``). Inception-v3 was trained on ImageNet photographs at 299x299; on 28x28 digits and tissue
tiles its features say little, and its weights are not available offline. The companion instead trains, for each
dataset, a small CNN on that dataset's own training split and uses its penultimate layer (128 features) as the space in
which FID, KID, precision/recall and memorization are measured (:mod:`qdiff_lib.metrics`), and its predictions for the
class consistency of samples.

Training is deterministic (seeded initialisation and shuffling, CPU) and quick (a few minutes at most on two
cores). The trained weights are cached outside git in ``$QDIFF_CACHE_DIR`` or ``~/.cache/qdiff_lib``, in a file
named after the dataset and a hash of the training recipe, written atomically; the test accuracy travels with
the weights.

An optional training-time augmentation (:data:`AUGMENTATIONS`: flips, the eight symmetries of the square, small
translations) can be chosen in the recipe; the default is none. A run chooses it with its option
``classifier_augment`` (:class:`qdiff_lib.experiment.RunOptions`), which :func:`get_classifier` and every metric
receive. Which augmentation a dataset adopts, and on what evidence, is decided in :mod:`qdiff_lib.classifier_choice`
(:data:`~qdiff_lib.classifier_choice.ADOPTED_AUGMENT`), which the studies planned after the measurement use
(:func:`qdiff_lib.grids._medmnist16`). Runs scored before keep the default recipe. Command line::

    python -m qdiff_lib.classifier --dataset mnist     # trains (or loads) and prints the test accuracy
    python -m qdiff_lib.classifier --dataset retinamnist --augment flips
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from qdiff_lib import data, numerics
from qdiff_lib._checks import check_choice
from qdiff_lib._io import atomic_write
from qdiff_lib.data import cache_dir

__all__ = [
    "AUGMENTATIONS",
    "SHIFT_PIXELS",
    "ClassifierRecipe",
    "augment_batch",
    "SmallCNN",
    "FeatureExtractor",
    "TrainedClassifier",
    "cache_dir",
    "recipe_for",
    "training_schedule",
    "train_classifier",
    "get_classifier",
    "weights_sha256",
    "classifier_record",
]

#: Torch threads a classifier is trained with, whatever the caller's setting. CPU results depend on the thread
#: count in their last bits (measured: PathMNIST weights trained with 1 and 2 threads differ by up to 0.08), and the
#: cached weights, hence every metric, must not depend on which process happened to train them first. 2: the
#: weights cached so far were trained with 2 threads.
TRAIN_THREADS = 2

#: Fraction of the available training images held out for the test accuracy when a dataset has no test
#: split on disk (offline PathMNIST: only a 1000-image subset of the training split exists).
HOLDOUT_FRACTION = 0.2

#: Training-time augmentations a recipe may name, each drawn independently per image and per step:
#: ``hflip`` mirrors left-right with probability 1/2; ``flips`` also mirrors top-bottom (independently);
#: ``dihedral`` applies one of the eight symmetries of the square (flips, transposition, 90-degree rotations), all
#: equally likely; ``shift`` translates by up to :data:`SHIFT_PIXELS` pixels in each direction (uniform integers,
#: edge pixels replicated into the vacated border). ``+`` combines a symmetry with the shift (symmetry first).
#: Every augmentation only moves pixels, so images keep their shape and their values.
AUGMENTATIONS = ("none", "hflip", "flips", "dihedral", "shift", "hflip+shift", "flips+shift", "dihedral+shift")

#: Largest translation of the ``shift`` augmentation, in pixels (of 28). Part of the meaning of the name ``shift``:
#: changing it would change cached weights under an unchanged hash, so give a new value a new name instead.
SHIFT_PIXELS = 2

#: Recipe fields added after cached weights existed, with the value that reproduces the earlier training. A field at
#: that value is left out of the hash, so that recipes which existed before the field keep their hash (and cache).
_HASH_NEUTRAL = {"augment": "none"}


@dataclass(frozen=True)
class ClassifierRecipe:
    """Everything that determines the trained weights; its hash names the cache file.

    Training runs ``max(epochs, ceil(min_steps / steps_per_epoch))`` epochs, so that small datasets
    (BreastMNIST: 546 images) still get enough optimiser steps. ``augment`` (one of :data:`AUGMENTATIONS`)
    transforms each training minibatch (never the test images), with draws from the seeded training generator.
    """

    epochs: int = 3
    min_steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    width: int = 16
    n_features: int = 128
    seed: int = 0
    version: int = 1  # bump when the architecture or the training loop changes
    augment: str = "none"

    def __post_init__(self) -> None:
        check_choice("augmentation", self.augment, AUGMENTATIONS)

    def hash(self, extra: str = "") -> str:
        """12 hex digits of the sha256 of the recipe's fields (and ``extra``); fields at their
        :data:`_HASH_NEUTRAL` value are left out, so adding such a field kept every earlier hash."""
        fields = {k: v for k, v in asdict(self).items() if not (k in _HASH_NEUTRAL and v == _HASH_NEUTRAL[k])}
        text = json.dumps(fields, sort_keys=True) + extra
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _dihedral(x: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    """Random flips (``hflip``, ``flips``) or symmetries of the square (``dihedral``) of ``(B, C, H, W)``."""
    n = len(x)
    # transpose, left-right, top-bottom: the three bits generate the dihedral group D4 (8 elements, each 1/8).
    n_bits = {"hflip": 1, "flips": 2, "dihedral": 3}[kind]
    bits = torch.randint(0, 2, (n, n_bits), generator=g).bool()[:, :, None, None, None]
    if kind == "dihedral":
        x = torch.where(bits[:, 2], x.transpose(-1, -2), x)
    x = torch.where(bits[:, 0], x.flip(-1), x)
    if n_bits >= 2:
        x = torch.where(bits[:, 1], x.flip(-2), x)
    return x


def _shift(x: torch.Tensor, g: torch.Generator, pixels: int = SHIFT_PIXELS) -> torch.Tensor:
    """Translate each image of ``(B, C, H, W)`` by ``(dy, dx)``, uniform integers in ``[-pixels, pixels]``;
    the vacated border repeats the edge pixels."""
    n, c, h, w = x.shape
    d = torch.randint(-pixels, pixels + 1, (n, 2), generator=g)
    padded = nn.functional.pad(x, (pixels,) * 4, mode="replicate")
    # out[i, :, r, s] = x[i, :, r - dy, s - dx] (clamped to the edge through the replicated padding)
    rows = torch.arange(h)[None, :] + pixels - d[:, :1]
    cols = torch.arange(w)[None, :] + pixels - d[:, 1:]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def augment_batch(x: torch.Tensor, augment: str, generator: torch.Generator) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` transformed by the augmentation ``augment`` (see :data:`AUGMENTATIONS`), each image
    with its own draws from ``generator``; ``"none"`` returns ``x`` itself and draws nothing."""
    check_choice("augmentation", augment, AUGMENTATIONS)
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W), got {tuple(x.shape)}")
    if augment == "none":
        return x
    parts = augment.split("+")
    if parts[0] != "shift":
        x = _dihedral(x, parts[0], generator)
    if parts[-1] == "shift":
        x = _shift(x, generator)
    return x


def recipe_for(dataset: str, augment: str = "none") -> ClassifierRecipe:
    """The training recipe of ``dataset``'s classifier with the training-time augmentation ``augment`` (one of
    :data:`AUGMENTATIONS`; default none: the recipe of every run scored before augmentations existed). Every other
    field is the same for every dataset. Changing a dataset's recipe changes its feature space and hence every
    metric measured in it, so a run names its recipe (its option ``classifier_augment``)."""
    data.dataset_info(dataset)  # validates the name
    return ClassifierRecipe(augment=augment)


class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers.

    ``(B, C, 28, 28)`` in [-1, 1] -> conv3x3(C, w) ReLU maxpool -> conv3x3(w, 2w) ReLU maxpool ->
    ``(B, 2w*7*7)`` -> Linear -> ReLU -> features ``(B, n_features)`` -> Linear -> logits ``(B, n_classes)``.
    """

    def __init__(self, n_channels: int, n_classes: int, width: int = 16, n_features: int = 128):
        super().__init__()
        self.n_channels = n_channels
        self.body = nn.Sequential(
            nn.Conv2d(n_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, n_features),
            nn.ReLU(),
        )
        self.head = nn.Linear(n_features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features: ``(B, C, 28, 28)`` -> ``(B, n_features)``."""
        if x.ndim != 4 or x.shape[1:] != (self.n_channels, 28, 28):
            raise ValueError(f"expected (B, {self.n_channels}, 28, 28), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)``."""
        return self.head(self.features(x))


class FeatureExtractor(nn.Module):
    """The classifier's penultimate layer as a frozen module, usable as torchmetrics' custom ``feature``.

    ``forward``: ``(B, C, 28, 28)`` float in [-1, 1] -> ``(B, num_features)`` float64; no gradient, eval mode.
    torchmetrics passes images to a custom module unchanged (its ``normalize`` flag only affects Inception),
    and reads ``num_features`` instead of probing the module with a dummy image.
    """

    def __init__(self, net: SmallCNN):
        super().__init__()
        self.net = net
        self.num_features = net.head.in_features
        self.train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # always in eval mode (no dropout/batchnorm now, but stay safe)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float64 out: torchmetrics computes KID's cubic kernel and FID's result in the features' dtype.
        return self.net.features(x.float()).double()


class TrainedClassifier(nn.Module):
    """A trained :class:`SmallCNN` with its provenance.

    Attributes:
        dataset: the dataset it was trained on.
        test_accuracy: accuracy on ``test_split`` (fraction in [0, 1]).
        test_split: where the test images came from, in words.
        recipe: the :class:`ClassifierRecipe`.
        feature: a :class:`FeatureExtractor` (penultimate layer), for FID/KID through torchmetrics.
    """

    def __init__(self, net: SmallCNN, dataset: str, test_accuracy: float, test_split: str, recipe: ClassifierRecipe):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.dataset = dataset
        self.test_accuracy = float(test_accuracy)
        self.test_split = test_split
        self.recipe = recipe
        self.feature = FeatureExtractor(self.net)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)`` of images ``(B, C, 28, 28)`` in [-1, 1]."""
        return self.net(x.float())

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Predicted classes ``(B,)`` (LongTensor)."""
        return torch.cat([self.net(x[i : i + batch_size].float()).argmax(1) for i in range(0, len(x), batch_size)])

    def __repr__(self) -> str:
        return (
            f"TrainedClassifier(dataset={self.dataset!r}, test_accuracy={self.test_accuracy:.4f}, "
            f"test_split={self.test_split!r})"
        )


def _check_labels(dataset: str, labels: torch.Tensor) -> None:
    if labels.ndim != 1:
        raise ValueError(
            f"{dataset} is multi-label (labels {tuple(labels.shape)}); the classifier needs one class per image")


def _train_test(
    dataset: str, recipe: ClassifierRecipe
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(x_train, y_train, x_test, y_test, description of the test images)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", data.DataNotice)
        x, y = data.load_labelled(dataset, "train")
    _check_labels(dataset, y)
    if data.held_out_split(dataset) == "test":
        x_test, y_test = data.load_labelled(dataset, "test")
        return x, y, x_test, y_test, f"{dataset} test split ({len(x_test)} images)"
    # No test split on disk (offline PathMNIST subset): hold out a seeded fraction of the training images.
    g = torch.Generator().manual_seed(recipe.seed + 1)
    perm = torch.randperm(len(x), generator=g)
    n_test = max(1, int(round(HOLDOUT_FRACTION * len(x))))
    te, tr = perm[:n_test], perm[n_test:]
    desc = (
        f"{n_test} of the {len(x)} available {dataset} training images, held out from classifier training "
        "(no test split on disk)"
    )
    return x[tr], y[tr], x[te], y[te], desc


@torch.no_grad()
def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    net.eval()
    correct = sum(int((net(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def training_schedule(n_train: int, recipe: ClassifierRecipe) -> tuple[int, int]:
    """``(epochs, optimiser steps per epoch)`` of ``recipe`` on ``n_train`` training images: ``max(epochs,
    ceil(min_steps / steps per epoch))`` epochs of ``ceil(n_train / batch_size)`` steps."""
    steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    return max(recipe.epochs, math.ceil(recipe.min_steps / steps_per_epoch)), steps_per_epoch


def train_classifier(
    dataset: str, recipe: ClassifierRecipe | None = None, progress: bool = True
) -> TrainedClassifier:
    """Train the classifier for ``dataset`` on CPU, deterministically from ``recipe.seed``, with
    :data:`TRAIN_THREADS` torch threads (restored afterwards); no caching.

    Adam on the cross-entropy, minibatches of ``recipe.batch_size`` drawn by a seeded permutation each epoch,
    each minibatch augmented by ``recipe.augment`` with draws from the same seeded generator.
    The caller's global RNG state is left unchanged (initialisation runs inside ``torch.random.fork_rng``).
    """
    recipe = recipe or recipe_for(dataset)
    before = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        return _train(dataset, recipe, progress)
    finally:
        torch.set_num_threads(before)


def _train(dataset: str, recipe: ClassifierRecipe, progress: bool) -> TrainedClassifier:
    info = data.dataset_info(dataset)
    x, y, x_test, y_test, test_desc = _train_test(dataset, recipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        net = SmallCNN(info.n_channels, info.n_classes, recipe.width, recipe.n_features)
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    g = torch.Generator().manual_seed(recipe.seed)
    epochs, steps_per_epoch = training_schedule(len(x), recipe)
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"classifier {dataset}", disable=not progress)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            xb = augment_batch(x[idx], recipe.augment, g)
            loss = nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    acc = _accuracy(net, x_test, y_test)
    return TrainedClassifier(net, data.dataset_info(dataset).name, acc, test_desc, recipe)


def _numerics_tag() -> str:
    """``pinned`` when this process runs the pinned kernels (:mod:`qdiff_lib.numerics`), else the CPU's level."""
    if not numerics.check():
        return "pinned"
    return f"native-{torch.backends.cpu.get_cpu_capability()}"


def _cache_path(dataset: str, recipe: ClassifierRecipe) -> Path:
    # The data source is part of the key: the offline PathMNIST subset and the full file give different weights.
    # So are the numerics: weights trained with other kernels differ, and so would every metric computed with them.
    source = data.find_file(data.dataset_info(dataset).filename)
    return cache_dir() / f"classifier_{dataset}_{recipe.hash(str(source is not None) + _numerics_tag())}.pt"


def _save(clf: TrainedClassifier, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "state_dict": clf.net.state_dict(),
        "dataset": clf.dataset,
        "test_accuracy": clf.test_accuracy,
        "test_split": clf.test_split,
        "recipe": asdict(clf.recipe),
        "n_channels": clf.net.n_channels,
        "n_classes": clf.net.head.out_features,
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def _load(path: Path) -> TrainedClassifier:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    recipe = ClassifierRecipe(**payload["recipe"])
    net = SmallCNN(payload["n_channels"], payload["n_classes"], recipe.width, recipe.n_features)
    net.load_state_dict(payload["state_dict"])
    return TrainedClassifier(net, payload["dataset"], payload["test_accuracy"], payload["test_split"], recipe)


def get_classifier(dataset: str, device: str | torch.device = "cpu", progress: bool = True,
                   augment: str = "none") -> TrainedClassifier:
    """The trained classifier of ``dataset`` with the recipe :func:`recipe_for` ``(dataset, augment)``: loaded from
    the cache, or trained now (on CPU) and cached (a classifier with augmentation takes about five minutes on two
    cores the first time).

    Returns a :class:`TrainedClassifier` on ``device``; ``.test_accuracy`` and ``.test_split`` say how good
    it is and on what; ``.recipe`` how it was trained; ``.feature`` is the feature extractor for torchmetrics.
    """
    dataset = data.dataset_info(dataset).name
    recipe = recipe_for(dataset, augment)
    path = _cache_path(dataset, recipe)
    if not path.exists():
        _save(train_classifier(dataset, recipe, progress=progress), path)
    # Always the object read back from the cache, so that a freshly trained classifier and a cached one are
    # the same object in every respect (one code path for both).
    return _load(path).to(device)


def weights_sha256(clf: TrainedClassifier) -> str:
    """A checksum of a classifier's weights (every tensor of its state, in order, as raw bytes)."""
    h = hashlib.sha256()
    for name, tensor in clf.net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def classifier_record(clf: TrainedClassifier) -> dict:
    """Which classifier scored a number: ``{"file"`` (its cache file, named by dataset and recipe hash),
    ``"sha256"`` (:func:`weights_sha256`), ``"augment"`` (the recipe's training augmentation), ``"test_accuracy"``,
    ``"test_split"}``."""
    return {"file": _cache_path(clf.dataset, clf.recipe).name, "sha256": weights_sha256(clf),
            "augment": clf.recipe.augment, "test_accuracy": clf.test_accuracy, "test_split": clf.test_split}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m qdiff_lib.classifier", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=data.DATASETS)
    parser.add_argument("--augment", default="none", choices=AUGMENTATIONS,
                        help="training-time augmentation of the recipe (default: %(default)s)")
    parser.add_argument("--retrain", action="store_true", help="train even if a cached classifier exists")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    recipe = recipe_for(args.dataset, args.augment)
    path = _cache_path(args.dataset, recipe)
    if args.retrain or not path.exists():
        _save(train_classifier(args.dataset, recipe, progress=not args.no_progress), path)
    clf = _load(path)
    print(f"{clf.dataset}: test accuracy {clf.test_accuracy:.4f} on {clf.test_split}")
    print(f"cached at {path}")


if __name__ == "__main__":
    main()
