"""Datasets and batch loaders for training: the built-in "shapes", torchvision's datasets, any ImageFolder.

Every batch is float32, normalised with the training split's per-channel mean and std, on the training
device. Datasets that fit in memory are held there whole as uint8 and each batch is one gather plus
device-side augmentation, with no host-device synchronisation; an ImageFolder is decoded by DataLoader
workers and augmented the same way once its batch reaches the device.
"""

from __future__ import annotations

import dataclasses
import functools
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class DataError(ValueError):
    """A dataset that cannot be loaded as asked; the message is one line for the user."""


class ImageError(DataError):
    """An image file of an ImageFolder that cannot be decoded; the message names the file.

    Raised where the file is read, a DataLoader worker included: the DataLoader then raises it
    again in the trainer as `ImageError(text)`, the text being the worker's whole traceback.
    The message is taken back from that traceback's last line, so it stays one line.
    """

    def __init__(self, message: str) -> None:
        mark = f"{type(self).__module__}.{type(self).__qualname__}: "
        if "\n" in message and mark in message:  # re-raised from a worker: its traceback, this message at its end
            message = message.rsplit(mark, 1)[1].strip().splitlines()[0]
        super().__init__(message)


SHAPES_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "hexagon",
    "crescent",
    "ellipse",
    "bar",
)
DATASETS: tuple[str, ...] = ("shapes", "mnist", "fashionmnist", "cifar10", "cifar100")
"""The named datasets; any other name is taken as the path to an ImageFolder (one sub-folder per class)."""

PAD = 4  # random crops are taken from the image padded with this many zero pixels on each side
_TORCHVISION = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
# "shapes" is a fixed dataset, like the others: `seed` picks the validation split and the order, not the images
_SHAPES_SEED, _SHAPES_TEST_SEED = 0, 1
_STATS_IMAGES = 500  # an ImageFolder's mean and std are estimated from this many training images
_Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images [N, C, H, W] and int64 labels [N]


# ---------------------------------------------------------------------------------------------------------
# The built-in dataset


def make_shapes(n: int, seed: int, size: int = 32) -> _Arrays:
    """`n` images of the SHAPES_CLASSES, uint8 [n, 3, size, size], and their int64 labels [n], balanced.

    Each shape has a random radius, position, rotation and colour on a random background colour of
    enough contrast, plus Gaussian pixel noise; everything follows from `seed`.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPES_CLASSES)).astype(np.int64)
    radius = rng.uniform(8, 13, n).astype(np.float32) * (size / 32)
    margin = 0.6 * radius  # a shape may reach a little past the border
    cx = rng.uniform(margin, size - margin).astype(np.float32)
    cy = rng.uniform(margin, size - margin).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    background, foreground = _shape_colours(rng, n)
    images = np.empty((n, 3, size, size), np.uint8)
    for lo in range(0, n, 1024):  # in chunks that stay in cache: several times faster than all at once
        part = slice(lo, min(n, lo + 1024))
        coverage = _draw_shapes(labels[part], radius[part], cx[part], cy[part], theta[part], size)
        bg, fg = background[part, :, None, None], foreground[part, :, None, None]
        pixels = coverage[:, None] * (fg - bg) + bg + 0.5  # + 0.5: the uint8 cast below then rounds
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * 14.0
        images[part] = np.clip(pixels, 0, 255, out=pixels)
    return images, labels


def _shape_colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Background and foreground RGB colours in 0..255, [n, 3] each, at least 0.3 apart in luminance."""
    luminance = np.array([0.299, 0.587, 0.114], np.float32)
    background = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    foreground = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    while (low := np.abs((foreground - background) @ luminance) < 0.3 * 255).any():
        foreground[low] = rng.uniform(0, 255, (int(low.sum()), 3))
    return background, foreground


def _draw_shapes(labels, radius, cx, cy, theta, size: int) -> np.ndarray:
    """How much of each pixel each image's shape covers, float32 [n, size, size] in 0..1 (anti-aliased)."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    coverage = np.empty((len(labels), size, size), np.float32)
    for k in range(len(SHAPES_CLASSES)):
        i = np.flatnonzero(labels == k)
        r = radius[i, None, None]
        x = centres[None, None, :] - cx[i, None, None]
        y = centres[None, :, None] - cy[i, None, None]
        cos, sin = np.cos(theta[i])[:, None, None], np.sin(theta[i])[:, None, None]
        u, v = (x * cos + y * sin) / r, (y * cos - x * sin) / r  # the shape's own frame, in radii
        coverage[i] = np.clip(0.5 - _shape_distance(k, u, v) * r, 0, 1)
    return coverage


def _shape_distance(k: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """About the signed distance from (u, v) to the edge of shape `k` (negative inside), in radii."""
    name, r, au, av = SHAPES_CLASSES[k], np.hypot(u, v), np.abs(u), np.abs(v)
    if name == "circle":
        return r - 1.0
    if name == "square":
        return np.maximum(au, av) - 0.8
    if name == "triangle":  # equilateral, corners on the unit circle
        return np.maximum(np.maximum(-v, 0.866 * u + 0.5 * v), 0.5 * v - 0.866 * u) - 0.5
    if name == "cross":
        return np.minimum(np.maximum(au - 0.3, av - 1.0), np.maximum(au - 1.0, av - 0.3))
    if name == "ring":
        return np.abs(r - 0.72) - 0.28
    if name == "star":  # five points: the radius falls linearly with the angle from a point
        between = np.abs(np.mod(np.arctan2(v, u), 2 * np.pi / 5) - np.pi / 5) / (np.pi / 5)
        return 0.6 * (r - 1.0 + 0.58 * between)
    if name == "hexagon":
        return np.maximum(av, 0.866 * au + 0.5 * av) - 0.87
    if name == "crescent":  # the unit disk less a disk of radius 0.75 shifted right by 0.6
        return np.maximum(r - 1.0, 0.75 - np.hypot(u - 0.6, v))
    if name == "ellipse":
        return 0.5 * (np.hypot(u, v / 0.5) - 1.0)
    if name == "bar":
        return np.maximum(au - 1.0, av - 0.25)
    raise AssertionError(name)


# ---------------------------------------------------------------------------------------------------------
# Batches


@dataclass(frozen=True)
class DataSpec:
    """What a Data produces and where it came from."""

    name: str  # a name in DATASETS, or the ImageFolder's path
    num_classes: int
    classes: tuple[str, ...]
    channels: int  # channels of the batches produced (after adaptation)
    size: int  # side of the batches produced (after resizing)
    source_channels: int  # as stored
    source_size: int  # as stored; an ImageFolder's is its first image's shorter side
    n_train: int
    n_val: int
    n_test: int | None  # None: the test split was not loaded
    on_device: bool  # True: the whole dataset is resident on the training device, and batches are made there


@dataclass(frozen=True)
class _Settings:
    """What build_data was asked for, handed down to the loaders."""

    batch_size: int
    val_fraction: float
    seed: int
    device: torch.device
    size: int | None
    channels: int | None
    augment: bool
    workers: int
    with_test: bool
    channels_last: bool


class Data:
    """Batches of one dataset: float32 images normalised per channel and int64 labels, on the training device.

    Subclasses say how uint8 batches are fetched (`_train_raw`, `_eval_raw`, `_val_image`); cropping,
    flipping, channel adaptation, normalisation and resizing happen here, on the device.
    """

    def __init__(self, spec: DataSpec, settings: _Settings, mean: Tensor, std: Tensor, loaded_size: int) -> None:
        self.spec = spec
        self.steps_per_epoch = spec.n_train // settings.batch_size  # the last incomplete batch is dropped
        self._settings = settings
        self.rank, self.world = 0, 1
        self.local_batch = settings.batch_size  # this process's share of each (global) batch
        device = settings.device
        self._scale = (1 / (255 * std)).view(1, -1, 1, 1).to(device)  # (x / 255 - mean) / std = x * scale + shift
        self._shift = (-mean / std).view(1, -1, 1, 1).to(device)
        self._loaded_size = loaded_size
        self._resize_to = spec.size if spec.size != loaded_size else None
        self._plan_device = device if spec.on_device else torch.device("cpu")

    def close(self) -> None:
        """Let go of whatever the batches are read with (worker processes); a closed Data reads no more."""

    def shard(self, rank: int, world: int) -> None:
        """Be rank `rank` of `world`: each global batch is cut in `world` equal parts, this rank takes part `rank`.

        The ranks together see exactly the batches (order, crops, flips) one process would see; validation
        batches are dealt out in turn. The batch size must divide evenly.
        """
        if self._settings.batch_size % world:
            raise DataError(f"--batch-size {self._settings.batch_size} does not divide among {world} processes")
        self.rank, self.world = rank, world
        self.local_batch = self._settings.batch_size // world

    def _my_part(self, t: Tensor) -> Tensor:
        """This rank's part of every global batch of a per-sample epoch plan (order, crops or flips)."""
        n, b, steps = self._settings.batch_size, self.local_batch, self.steps_per_epoch
        per_batch = t[: steps * n].reshape(steps, n, *t.shape[1:])
        return per_batch[:, self.rank * b : (self.rank + 1) * b].reshape(steps * b, *t.shape[1:])

    def set_size(self, size: int) -> None:
        """Produce `size` x `size` batches from now on (resized on the device): the model's input side."""
        self.spec = dataclasses.replace(self.spec, size=size)
        self._resize_to = size if size != self._loaded_size else None

    def train_batches(self, epoch: int, skip: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled (and augmented) training batches, from batch `skip` on.

        The order and the augmentation follow from (seed, epoch) alone, so resuming at `skip` gives the same
        batches that an uninterrupted epoch would have given from there.
        """
        if skip < 0:
            raise ValueError(f"skip must be >= 0, not {skip}")
        order, shifts, flips = self._epoch_plan(epoch)
        if self.world > 1:
            order, shifts, flips = self._my_part(order), self._my_part(shifts), self._my_part(flips)
        n = self.local_batch
        batches = self._train_raw(order, skip)
        for step, (x, y) in enumerate(batches, start=skip):
            if self._settings.augment:
                x = _crop_and_flip(x, shifts[step * n : (step + 1) * n], flips[step * n : (step + 1) * n])
            yield self._finish(x), y

    def val_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Every validation sample once, in a fixed order, not augmented (this rank's turns, when sharded)."""
        return ((self._finish(x), y) for i, (x, y) in enumerate(self._eval_raw("val")) if i % self.world == self.rank)

    def test_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Every test sample once, in a fixed order, not augmented; DataError if the test split was not loaded."""
        if self.spec.n_test is None:
            raise DataError(f"{self.spec.name}: the test split was not loaded (ask build_data for with_test=True)")
        return ((self._finish(x), y) for x, y in self._eval_raw("test"))

    def fixed_sample(self, index: int = 0) -> tuple[Tensor, int]:
        """Validation image `index`, normalised, [1, C, H, W] on the device, and its label: for activation maps."""
        if not 0 <= index < self.spec.n_val:
            raise DataError(f"{self.spec.name}: no validation image {index} (the split has {self.spec.n_val})")
        x, label = self._val_image(index)
        return self._finish(x), label

    def fixed_images(self, count: int) -> tuple[Tensor, list[int], list[int]]:
        """`count` validation images for captures, one per class in turn (the first of each in the split's order):
        the batch [n, C, H, W] on the device, their labels and their indices in the split."""
        if count < 1:
            raise DataError(f"no validation images to capture (asked for {count})")
        by_class: dict[int, list[int]] = {}
        for i, label in enumerate(self._val_labels_host().tolist()):
            by_class.setdefault(int(label), []).append(i)
        queues = [by_class[k][::-1] for k in sorted(by_class)]
        picked: list[int] = []
        while len(picked) < min(count, self.spec.n_val):
            for queue in queues:
                if queue and len(picked) < count:
                    picked.append(queue.pop())
        images, labels = zip(*(self._val_image(i) for i in picked), strict=True)
        return self._finish(torch.cat(images)), [int(y) for y in labels], picked

    def _val_labels_host(self) -> np.ndarray:
        """The validation split's labels, in its order, on the host."""
        raise NotImplementedError

    def _epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """This epoch's sample order, crop corners [n, 2] and flips [n], from a generator seeded by (seed, epoch).

        A generator on the training device makes them there; the same seed gives another order on another device.
        """
        n, device = self.spec.n_train, self._plan_device
        generator = torch.Generator(device=device).manual_seed(_mix(self._settings.seed, epoch))
        order = torch.randperm(n, generator=generator, device=device)
        shifts = torch.randint(0, 2 * PAD + 1, (n, 2), generator=generator, device=device)
        flips = torch.rand(n, generator=generator, device=device) < 0.5
        return order, shifts.to(self._settings.device), flips.to(self._settings.device)

    def _finish(self, x: Tensor) -> Tensor:
        """uint8 [B, C, H, W] -> the float32 batch the model sees."""
        x = _adapt_channels(x.float(), self.spec.channels)
        x = torch.addcmul(self._shift, x, self._scale)
        if self._resize_to is not None:
            x = F.interpolate(x, size=(self._resize_to, self._resize_to), mode="bilinear", align_corners=False)
        if self._settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _train_raw(self, order: Tensor, skip: int) -> Iterator[tuple[Tensor, Tensor]]:
        """uint8 images and labels on the device, batch `skip` on; batch b holds training samples order[b*B:(b+1)*B]."""
        raise NotImplementedError

    def _eval_raw(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        """uint8 images and labels on the device, all of "val" or "test" in order, the last batch maybe short."""
        raise NotImplementedError

    def _val_image(self, index: int) -> tuple[Tensor, int]:
        """Validation image `index`, uint8 [1, C, H, W] on the device, and its label."""
        raise NotImplementedError


def _mix(seed: int, epoch: int) -> int:
    """A 64-bit seed for one epoch, far from those of nearby (seed, epoch) pairs."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])


@functools.lru_cache(maxsize=8)
def _ranges(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """0..h-1, 0..w-1 and w-1..0 on the device, made once: three kernel launches a batch fewer."""
    along_w = torch.arange(w, device=device)
    return torch.arange(h, device=device), along_w, along_w.flip(0)


def _crop_and_flip(x: Tensor, shifts: Tensor, flips: Tensor) -> Tensor:
    """Random crops of the zero-padded images and horizontal flips, as one gather over the batch.

    `shifts` [B, 2] is each crop's top-left corner in the padded image (0..2*PAD), `flips` [B] which to mirror.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    padded_w = w + 2 * PAD
    along_h, along_w, mirrored = _ranges(h, w, x.device)
    rows = shifts[:, :1] + along_h  # [B, H]
    columns = shifts[:, 1:] + torch.where(flips[:, None], mirrored, along_w)  # [B, W]
    source = (rows[:, :, None] * padded_w + columns[:, None, :]).view(b, 1, h * w)  # pixel of each output pixel
    return padded.view(b, c, -1).gather(2, source.expand(b, c, h * w)).view(b, c, h, w)


def _adapt_channels(x: Tensor, channels: int) -> Tensor:
    """1 -> 3 channels by repeating, 3 -> 1 by averaging; float x."""
    if x.shape[1] == channels:
        return x
    return x.expand(-1, channels, -1, -1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)


def _channel_stats(batches: Iterable[Tensor], channels: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std in 0..1 of uint8 batches after channel adaptation, float32 on the CPU.

    A batch that needs no adaptation is summed from each channel's histogram of values: integer sums, so
    the same figures as float64 sums (exact too, for integers), several times faster on a CPU.
    """
    total = squares = torch.zeros(channels, dtype=torch.float64)
    values = torch.arange(256, dtype=torch.float64)
    count = 0
    for x in batches:
        count += x[:, 0].numel()  # pixels per channel
        if x.dtype == torch.uint8 and x.shape[1] == channels:
            hist = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(channels)])
            hist = hist.cpu().double()  # note: a sync, once per chunk, at build
            total, squares = total + hist @ values, squares + hist @ values.square()
            continue
        x = _adapt_channels(x.float(), channels)
        total = total + x.sum(dim=(0, 2, 3), dtype=torch.float64).cpu()  # note: a sync, once per chunk, at build
        squares = squares + x.square().sum(dim=(0, 2, 3), dtype=torch.float64).cpu()
    mean = total / count / 255
    std = (squares / count / 255**2 - mean.square()).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into sorted training and validation indices."""
    n_val = round(n * val_fraction)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _check_channels(name: str, source: int, wanted: int | None) -> int:
    if wanted is None or wanted == source:
        return source
    if {source, wanted} == {1, 3}:
        return wanted
    raise DataError(f"{name}: cannot adapt {source}-channel images to {wanted} channels (only 1 <-> 3)")


# ---------------------------------------------------------------------------------------------------------
# Datasets held whole on the device


class _TensorData(Data):
    """A dataset held whole on the training device as uint8: each batch is a gather there."""

    def __init__(
        self, name: str, classes: Iterable[str], pool: _Arrays, test: _Arrays | None, settings: _Settings
    ) -> None:
        images, labels = pool
        device = settings.device
        train_index, val_index = _split(len(labels), settings.val_fraction, settings.seed)
        self._images = torch.from_numpy(images).to(device)
        self._labels = torch.from_numpy(labels).to(device)
        self._index = {"train": torch.from_numpy(train_index).to(device), "val": torch.from_numpy(val_index).to(device)}
        self._val_labels = labels[val_index]  # on the host too, for fixed_sample's label without a sync
        if test is not None:
            self._test_images = torch.from_numpy(test[0]).to(device)
            self._test_labels = torch.from_numpy(test[1]).to(device)
        source_channels, source_size = images.shape[1], images.shape[-1]
        channels = _check_channels(name, source_channels, settings.channels)
        spec = DataSpec(
            name=name,
            num_classes=len(classes),
            classes=tuple(classes),
            channels=channels,
            size=settings.size or source_size,
            source_channels=source_channels,
            source_size=source_size,
            n_train=len(train_index),
            n_val=len(val_index),
            n_test=None if test is None else len(test[1]),
            on_device=True,
        )
        chunks = (self._images[self._index["train"][lo : lo + 4096]] for lo in range(0, spec.n_train, 4096))
        mean, std = _channel_stats(chunks, channels)
        super().__init__(spec, settings, mean, std, loaded_size=source_size)

    def _train_raw(self, order: Tensor, skip: int) -> Iterator[tuple[Tensor, Tensor]]:
        index, n = self._index["train"][order], self.local_batch
        for step in range(skip, self.steps_per_epoch):
            i = index[step * n : (step + 1) * n]
            yield self._images[i], self._labels[i]

    def _eval_raw(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        n = self._settings.batch_size
        if split == "test":
            for lo in range(0, self.spec.n_test, n):
                yield self._test_images[lo : lo + n], self._test_labels[lo : lo + n]
            return
        for lo in range(0, self.spec.n_val, n):
            i = self._index["val"][lo : lo + n]
            yield self._images[i], self._labels[i]

    def _val_image(self, index: int) -> tuple[Tensor, int]:
        return self._images[self._index["val"][index : index + 1]], int(self._val_labels[index])

    def _val_labels_host(self) -> np.ndarray:
        return np.asarray(self._val_labels)


def _load_torchvision(name: str, root: Path, with_test: bool) -> tuple[list[str], _Arrays, _Arrays | None]:
    """Class names, the training pool and maybe the test split of a torchvision dataset, downloaded if missing."""
    import torchvision.datasets  # here: only these datasets and ImageFolder need torchvision

    dataset_class = getattr(torchvision.datasets, _TORCHVISION[name])
    try:
        root.mkdir(parents=True, exist_ok=True)
        train = dataset_class(root, train=True, download=True)
        test = dataset_class(root, train=False, download=True) if with_test else None
    except (RuntimeError, OSError):  # OSError covers urllib's URLError
        raise DataError(
            f"{name}: cannot download into {root}/ (no network?) and the files are not there; "
            f"put them there by hand, or use the built-in 'shapes' dataset"
        ) from None
    return list(train.classes), _arrays(train), None if test is None else _arrays(test)


def _arrays(dataset) -> _Arrays:
    """A torchvision dataset's raw images as uint8 [N, C, H, W] and labels as int64 [N]."""
    images = np.asarray(dataset.data)  # MNIST: [N, H, W]; CIFAR: [N, H, W, C]
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images, dtype=np.uint8), np.asarray(dataset.targets, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------
# ImageFolder


class _Batches(torch.utils.data.Sampler):
    """Lists of dataset indices, replaced before each pass: one DataLoader, and its workers, serves every epoch."""

    def __init__(self, batches: list[list[int]] | None = None) -> None:
        self.batches = batches or []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _FolderData(Data):
    """An ImageFolder decoded and resized by DataLoader workers; crops, flips and normalisation on the device."""

    def __init__(self, root: Path, settings: _Settings) -> None:
        pool, test, source_size = _open_folders(root, settings)
        self._pool = pool
        self._train_index, self._val_index = _split(len(pool), settings.val_fraction, settings.seed)
        channels = _check_channels(str(root), 3, settings.channels)  # the loader converts every image to RGB
        spec = DataSpec(
            name=str(root),
            num_classes=len(pool.classes),
            classes=tuple(pool.classes),
            channels=channels,
            size=settings.size or source_size,
            source_channels=3,
            source_size=source_size,
            n_train=len(self._train_index),
            n_val=len(self._val_index),
            n_test=None if test is None else len(test),
            on_device=False,
        )
        self._settings = settings  # before Data.__init__: the loaders below read it
        self._train_batches = _Batches()
        self._loaders = {
            "train": self._loader(pool, self._train_batches),
            "val": self._loader(pool, _Batches(_chunked(self._val_index.tolist(), settings.batch_size))),
        }
        if test is not None:
            self._loaders["test"] = self._loader(test, _Batches(_chunked(list(range(len(test))), settings.batch_size)))
        sample = np.random.default_rng(settings.seed).permutation(self._train_index)[:_STATS_IMAGES]
        mean, std = _channel_stats(self._batches_of(sample.tolist()), channels)
        super().__init__(spec, settings, mean, std, loaded_size=spec.size)

    def _train_raw(self, order: Tensor, skip: int) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.local_batch
        indices = self._train_index[order[skip * n : self.steps_per_epoch * n].numpy()].tolist()  # order is on the CPU
        self._train_batches.batches = _chunked(indices, n)
        return self._to_device(self._loaders["train"])

    def _eval_raw(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        return self._to_device(self._loaders[split])

    def close(self) -> None:
        """End the persistent loaders' workers now, not when the garbage collector finds a failed run's frames."""
        for loader in self._loaders.values():
            running, loader._iterator = loader._iterator, None  # torch keeps a persistent loader's iterator here
            if running is not None:
                running._shutdown_workers()

    def _val_image(self, index: int) -> tuple[Tensor, int]:
        image, label = self._pool[int(self._val_index[index])]
        return image[None].to(self._settings.device), label

    def _val_labels_host(self) -> np.ndarray:
        return np.asarray(self._pool.targets)[self._val_index]

    def _loader(self, dataset, batches: _Batches) -> torch.utils.data.DataLoader:
        workers = self._settings.workers
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=workers,
            pin_memory=self._settings.device.type == "cuda",
            persistent_workers=workers > 0,
        )

    def _batches_of(self, indices: list[int]) -> Iterator[Tensor]:
        """uint8 images of the pool at `indices`, in batches, on the CPU: for the normalisation statistics."""
        loader = torch.utils.data.DataLoader(
            self._pool, batch_sampler=_chunked(indices, self._settings.batch_size), num_workers=self._settings.workers
        )
        return (x for x, _ in _batches(loader))

    def _to_device(self, loader) -> Iterator[tuple[Tensor, Tensor]]:
        device = self._settings.device
        for x, y in _batches(loader):
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _batches(loader: torch.utils.data.DataLoader) -> Iterator:
    """`loader`'s batches; an error in one is raised with the frames it passed through cleared.

    The DataLoader raises a worker's error again from a frame that holds it: a reference cycle that
    keeps the loader's iterator, and so its worker processes, until the garbage collector runs, whose
    finalisers then leave each worker 5 s to exit. With the frames cleared they go as the error does
    (a persistent loader's workers, held by the Data itself, still go with it).
    """
    try:
        yield from loader
    except Exception as exc:
        traceback.clear_frames(exc.__traceback__)
        raise


def _open_folders(root: Path, settings: _Settings):
    """The ImageFolder of the training pool, that of the test split (or None), and the first image's shorter side.

    Both yield uint8 tensors of `settings.size` (else that side): the shorter side resized to it, then the centre.
    """
    from torchvision import datasets, transforms  # here: only ImageFolder and _load_torchvision need torchvision

    train_root, test_root = _folder_roots(root, settings.with_test)
    pool = _image_folder(datasets, train_root)
    source_size = min(pool.loader(pool.samples[0][0]).size)
    side = settings.size or source_size
    resize = [transforms.Resize(side), transforms.CenterCrop(side)]
    pool.transform = transforms.Compose([*resize, transforms.PILToTensor()])
    if test_root is None:
        return pool, None, source_size
    test = _image_folder(datasets, test_root)
    if test.classes != pool.classes:
        raise DataError(f"{root}: {test_root.name}/ and train/ have different classes")
    test.transform = pool.transform
    return pool, test, source_size


def _folder_roots(root: Path, with_test: bool) -> tuple[Path, Path | None]:
    """The folder of the training pool, and of the test split when asked (train/ with test/ or val/ beside it)."""
    test_root = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if (root / "train").is_dir() and test_root is not None:
        return root / "train", test_root if with_test else None
    if with_test:
        raise DataError(f"{root}: no test split (that needs train/ and test/ or val/ sub-folders)")
    return root, None


def _image_folder(datasets, root: Path):
    """torchvision's ImageFolder of `root`, or DataError."""
    try:
        return datasets.ImageFolder(root, loader=_load_image)
    except OSError:  # FileNotFoundError: no class folder, or no image in them
        raise DataError(f"{root}: no images found (an ImageFolder holds one sub-folder of images per class)") from None


def _load_image(path: str):
    """torchvision's own loader (an RGB PIL image), with a file it cannot decode named: ImageError.

    A module-level function, so the ImageFolder that holds it pickles for DataLoader workers.
    """
    from PIL import UnidentifiedImageError
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except UnidentifiedImageError:  # its message repeats the path, as a file object's repr
        raise ImageError(f"cannot read image {path}: not an image file PIL can decode") from None
    except Exception as exc:  # truncated, broken chunks (PIL says SyntaxError), too large, unreadable
        why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc).split("\n")[0] or type(exc).__name__
        raise ImageError(f"cannot read image {path}: {why}") from None


def _chunked(items: list[int], n: int) -> list[list[int]]:
    return [items[lo : lo + n] for lo in range(0, len(items), n)]


# ---------------------------------------------------------------------------------------------------------
# Entry point


def build_data(
    dataset: str,
    *,
    data_dir: str | Path = "data",
    batch_size: int = 128,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    size: int | None = None,
    channels: int | None = None,
    augment: bool = True,
    workers: int = 2,
    with_test: bool = False,
    shapes_count: int = 24_000,
    channels_last: bool = False,
) -> Data:
    """The batches of `dataset`: a name in DATASETS or the path to an ImageFolder; DataError if it cannot load."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"the validation fraction must be in [0, 1), not {val_fraction}")
    if batch_size < 1 or (size is not None and size < 1):
        raise DataError(f"batch size and image size must be positive (got {batch_size} and {size})")
    settings = _Settings(
        batch_size, val_fraction, seed, torch.device(device), size, channels, augment, workers, with_test, channels_last
    )
    if dataset == "shapes":
        pool = make_shapes(shapes_count, _SHAPES_SEED)
        test = make_shapes(shapes_count // 6, _SHAPES_TEST_SEED) if with_test else None
        return _TensorData("shapes", SHAPES_CLASSES, pool, test, settings)
    if dataset in _TORCHVISION:
        classes, pool, test = _load_torchvision(dataset, Path(data_dir), with_test)
        return _TensorData(dataset, classes, pool, test, settings)
    if Path(dataset).is_dir():
        return _FolderData(Path(dataset), settings)
    raise DataError(
        f"unknown dataset {dataset!r}: use one of {', '.join(DATASETS)}, "
        f"or the path to an ImageFolder (a folder with one sub-folder of images per class)"
    )
