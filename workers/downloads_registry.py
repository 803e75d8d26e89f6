"""What the official MNIST, Fashion-MNIST and CIFAR-10 files are: names, md5s, mirrors.

`REGISTRY` is a module-level dict (re-exported by `workers.downloads`, the same object):
tests replace entries with `monkeypatch.setitem`, callers can also pass `mirrors=` / `md5=`
overrides to `spec` (and to `workers.downloads.load_official`). The errors of the official
data sets are defined here too, the bottom of the three download modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace


class DatasetError(RuntimeError):
    """Base of the errors raised here."""


class ChecksumError(DatasetError):
    """A file's md5 differs from the registry's."""


class DownloadError(DatasetError):
    """Files are missing and could not be downloaded."""


class DatasetFormatError(DatasetError):
    """A file is not in the format expected (malformed IDX, bad CIFAR-10 pickle)."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str  # "idx" or "cifar10-python"
    files: tuple[str, ...]  # what is downloaded / what to place in the directory
    md5: Mapping[str, str]  # known md5 per file name (also un-gzipped / extracted forms)
    mirrors: tuple[str, ...]  # base URLs; the file name is appended
    num_classes: int
    input_shape: tuple[int, ...]
    homepage: str = ""
    notes: str = ""
    parts: tuple[str, ...] = field(default=())  # idx: the four IDX files without ".gz"


IDX_PARTS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"

REGISTRY: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        format="idx",
        parts=IDX_PARTS,
        files=tuple(p + ".gz" for p in IDX_PARTS),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            # the decompressed IDX files
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        num_classes=10,
        input_shape=(1, 28, 28),
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        format="idx",
        parts=IDX_PARTS,
        files=tuple(p + ".gz" for p in IDX_PARTS),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        num_classes=10,
        input_shape=(1, 28, 28),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        notes="No md5 is registered for the un-gzipped files: they are parsed and their md5 "
        "recorded, but not verified.",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        format="cifar10-python",
        files=(CIFAR10_TARBALL,),
        md5={
            CIFAR10_TARBALL: "c58f30108f718f92721af3b95e74349a",
            # the extracted batches (the values torchvision checks)
            f"{CIFAR10_DIR}/data_batch_1": "c99cafc152244af753f735de768cd75f",
            f"{CIFAR10_DIR}/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            f"{CIFAR10_DIR}/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            f"{CIFAR10_DIR}/data_batch_4": "634d18415352ddfa80567beed471001a",
            f"{CIFAR10_DIR}/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            f"{CIFAR10_DIR}/test_batch": "40351d587109b95175f43aff81a1287e",
        },
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        num_classes=10,
        input_shape=(3, 32, 32),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
}


def spec(
    name: str,
    *,
    mirrors: Sequence[str] | None = None,
    md5: Mapping[str, str] | None = None,
) -> DatasetSpec:
    """The registry entry of `name`, with `mirrors` replacing and `md5` updating its own."""
    try:
        s = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown official data set {name!r}; known: {sorted(REGISTRY)}") from None
    if mirrors is not None:
        s = replace(s, mirrors=tuple(mirrors))
    if md5 is not None:
        s = replace(s, md5={**s.md5, **md5})
    return s
