"""Fashion-MNIST for the book's training runs, and a small synthetic stand-in.

    data = load_fashion_mnist("path/to/folder")      # the four official IDX files, .gz or not
    data = load_fashion_mnist()                      # default cache folder; downloads if missing
    data = synthetic_dataset(seed=0)                 # generated, 10 classes, runs anywhere
    for X, y in data.batches("train", 128, device="cuda", resize=96, generator=g):
        ...                                          # X: float (B, 1, 96, 96) in [0, 1], on the device

Images stay uint8 in memory; each batch is converted to float (pixel / 255, as the
book's `transforms.ToTensor()`), moved to the training device, and resized there
with bilinear interpolation (the book's `transforms.Resize`), one batch at a time.
Training batches are shuffled by a torch.Generator, so a seed fixes their order.

The IDX reader is cuconv's own (a few lines) rather than torchvision's, so that a
truncated or corrupt file fails with a message naming the file and what is wrong.
The mirror list and the official md5 sums are torchvision's (`FashionMNIST.mirrors`,
`FashionMNIST.resources`), and so is the md5 helper; the download itself is a plain
urllib request with a bounded timeout, which torchvision's downloader does not offer.
"""

import dataclasses
import gzip
import os
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import torch
from torch.nn import functional as F

__all__ = [
    "CLASSES", "FILES", "MIRRORS", "MD5", "IDXError", "DataNotFoundError", "Dataset", "read_idx",
    "default_data_dir", "find_files", "download_fashion_mnist", "load_fashion_mnist", "synthetic_dataset",
    "resize_batch",
]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# split -> (images file, labels file), names as in the official release (without .gz)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _official_tables():
    try:
        from torchvision.datasets import FashionMNIST
        return list(FashionMNIST.mirrors), dict(FashionMNIST.resources)
    except ImportError:  # torchvision is optional: the same values, as published with Fashion-MNIST
        return (["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"], {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        })


MIRRORS, MD5 = _official_tables()

_HOW_TO = (
    "To provide the data, put the four official Fashion-MNIST files\n"
    "    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz  t10k-images-idx3-ubyte.gz  t10k-labels-idx1-ubyte.gz\n"
    "(gzipped or not) in one folder and pass it with --data-dir DIR (or set CUCONV_DATA_DIR), or download them\n"
    "from {mirror} into {cache}.\n"
    "To run without them, use --dataset synthetic (a generated 10-class set, not Fashion-MNIST)."
)


class IDXError(ValueError):
    """An IDX file is truncated, corrupt or not what was expected."""


class DataNotFoundError(FileNotFoundError):
    """Fashion-MNIST is not on disk and could not be downloaded."""


def default_data_dir():
    """$CUCONV_DATA_DIR, else $XDG_CACHE_HOME/cuconv/fashion-mnist (~/.cache/cuconv/fashion-mnist)."""
    if os.environ.get("CUCONV_DATA_DIR"):
        return Path(os.environ["CUCONV_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cuconv" / "fashion-mnist"


# IDX element types (the third header byte) -> (torch dtype, bytes, struct code, big-endian)
_IDX_TYPES = {0x08: (torch.uint8, 1), 0x09: (torch.int8, 1), 0x0B: (torch.int16, 2),
              0x0C: (torch.int32, 4), 0x0D: (torch.float32, 4), 0x0E: (torch.float64, 8)}


def _read_bytes(path):
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # not gzip: an uncompressed IDX file
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as error:
        raise IDXError(f"{path}: the gzip stream ends early ({len(raw)} bytes on disk): the file is truncated, "
                       f"probably an interrupted download; delete it and fetch it again") from error
    except (gzip.BadGzipFile, zlib.error, OSError) as error:
        raise IDXError(f"{path}: corrupt gzip data ({error}); delete the file and fetch it again") from error


def read_idx(path):
    """Read one IDX file (gzip or plain) into a tensor of its declared type and shape."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXError(f"{path}: only {len(data)} bytes, too short for an IDX header (4 bytes of magic)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in _IDX_TYPES or ndim == 0:
        raise IDXError(f"{path}: not an IDX file (magic bytes {data[:4].hex()}; expected 0000 then a type "
                       f"code such as 08 for uint8 and the number of dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, the file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype, size = _IDX_TYPES[dtype_code]
    count = 1
    for s in shape:
        count *= s
    expected = header + count * size
    if len(data) < expected:
        raise IDXError(f"{path}: truncated: the header declares shape {tuple(shape)} ({expected} bytes in all), "
                       f"but the data has only {len(data)} bytes; the file is incomplete, fetch it again")
    if len(data) > expected:
        raise IDXError(f"{path}: {len(data) - expected} unexpected bytes after the {count} elements of "
                       f"shape {tuple(shape)} the header declares; the file is corrupt")
    tensor = torch.frombuffer(bytearray(data[header:]), dtype=dtype) if count else torch.empty(0, dtype=dtype)
    if size > 1 and torch.tensor([1], dtype=torch.int16).view(torch.uint8)[0] == 1:  # IDX is big-endian
        tensor = tensor.view(torch.uint8).view(-1, size).flip(1).contiguous().view(dtype)
    return tensor.reshape(shape)


def find_files(folder):
    """The four files in `folder` (also torchvision's FashionMNIST/raw layout): returns
    ({name: path}, [missing names]); each name may be present with or without .gz."""
    folder = Path(folder)
    found, missing = {}, []
    for split in FILES.values():
        for name in split:
            for candidate in (folder / name, folder / (name + ".gz"),
                              folder / "FashionMNIST" / "raw" / name, folder / "FashionMNIST" / "raw" / (name + ".gz")):
                if candidate.is_file():
                    found[name] = candidate
                    break
            else:
                missing.append(name)
    return found, missing


def _md5(path):
    try:
        from torchvision.datasets.utils import calculate_md5
        return calculate_md5(path)
    except ImportError:
        import hashlib
        return hashlib.md5(Path(path).read_bytes(), usedforsecurity=False).hexdigest()


MAX_TIMEOUT = 86400.0  # seconds: a day


def download_fashion_mnist(folder=None, mirrors=None, md5=None, timeout=30.0, progress=False):
    """Fetch the four .gz files into `folder` (default: the cache folder) from the first mirror
    that serves each, checking every file against its md5 sum; files already there and intact
    are kept. Raises DataNotFoundError saying what was tried and how to provide the files."""
    folder = Path(folder) if folder is not None else default_data_dir()
    mirrors = list(MIRRORS if mirrors is None else mirrors)
    md5 = dict(MD5 if md5 is None else md5)
    if not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:  # (past ~9e9 s sockets overflow)
        raise ValueError(f"Fashion-MNIST: expected a download timeout of more than 0 and at most {MAX_TIMEOUT:g} "
                         f"seconds, got {timeout!r}")
    errors = []
    for filename, checksum in md5.items():
        target = folder / filename
        if target.is_file() and _md5(target) == checksum:
            continue
        if not mirrors:
            raise ValueError("Fashion-MNIST: expected at least one mirror to download from, but got an empty list")
        tried = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + filename
            part = target.with_name(target.name + ".part")
            try:
                folder.mkdir(parents=True, exist_ok=True)
                request = urllib.request.Request(url, headers={"User-Agent": "cuconv"})
                with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                got = _md5(part)
                if got != checksum:
                    raise IDXError(f"md5 mismatch: got {got}, expected {checksum}")
                os.replace(part, target)
                if progress:
                    print(f"cuconv: downloaded {url} -> {target}")
                break
            except (OSError, urllib.error.URLError, IDXError) as error:
                part.unlink(missing_ok=True)
                tried.append(f"{url}: {getattr(error, 'reason', None) or error}")
        else:
            errors.extend(tried)
    if errors:
        raise DataNotFoundError(
            f"Fashion-MNIST: could not download the data into {folder}.\n"
            "Tried:\n" + "".join(f"    {e}\n" for e in errors)
            + _HOW_TO.format(mirror=mirrors[0] if mirrors else MIRRORS[0], cache=folder))
    return folder


@dataclasses.dataclass
class Dataset:
    """Images (N, 28, 28) uint8 and labels (N,) int64 for 'train' and 'val', plus a name
    that says what they are ('fashion-mnist', 'fashion-mnist subset ...' or 'synthetic')."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    source: str = ""
    classes: tuple = CLASSES

    def __len__(self):
        return len(self.train_labels)

    def split(self, split):
        if split == "train":
            return self.train_images, self.train_labels
        if split == "val":
            return self.val_images, self.val_labels
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")

    def limit(self, train=None, val=None):
        """The first `train` / `val` examples only (None: all)."""
        return dataclasses.replace(
            self, train_images=self.train_images[:train], train_labels=self.train_labels[:train],
            val_images=self.val_images[:val], val_labels=self.val_labels[:val])

    def describe(self):
        return (f"{self.name}: {len(self.train_labels)} train / {len(self.val_labels)} val images"
                + (f" from {self.source}" if self.source else ""))

    def num_batches(self, split, batch_size):
        return -(-len(self.split(split)[1]) // batch_size)

    def batches(self, split, batch_size, device="cpu", resize=None, generator=None, shuffle=None,
                rank=0, world_size=1, dtype=torch.float32):
        """Yield (X, y) batches: X float32 (B, 1, H, W) = pixel / 255 on `device`, resized there to
        resize x resize (bilinear, antialiased when shrinking, as torchvision's Resize) when
        `resize` is not 28; y int64.

        Training batches are shuffled (a fresh permutation per call, drawn from `generator`),
        validation batches are in order, as the book's loaders. With world_size > 1 and shuffling,
        each global batch of `batch_size` is cut into world_size nearly equal consecutive shards and
        this rank gets shard `rank` (global batches with fewer than world_size examples are dropped),
        so that the ranks together take the same optimisation steps as one process (but for batch
        norm's statistics, each rank's shard's, as torch's DDP without SyncBatchNorm); without
        shuffling (evaluation) this rank takes every world_size-th example, so that the ranks
        together cover the split exactly once.
        """
        images, labels = self.split(split)
        n = len(labels)
        if shuffle is None:
            shuffle = split == "train"
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if world_size > 1 and not shuffle:
            order, n = order[rank::world_size], len(order[rank::world_size])
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if world_size > 1 and shuffle:
                if len(idx) < world_size:
                    break
                idx = torch.tensor_split(idx, world_size)[rank]
            X = images[idx].to(device, non_blocking=True).unsqueeze(1).to(dtype).div_(255)
            yield resize_batch(X, resize), labels[idx].to(device, non_blocking=True)


def resize_batch(X, size):
    """Resize a (B, C, H, W) float batch to size x size on its own device (bilinear, antialiased
    when shrinking: as the book's transforms.Resize); size None or equal to the input: unchanged."""
    if size is None or tuple(X.shape[-2:]) == (size, size):
        return X
    # (half types through float32, rounded once: torch's antialiased kernel takes no half type)
    wide = X if X.dtype in (torch.float32, torch.float64) else X.float()
    shrinks = size < X.shape[-2] or size < X.shape[-1]  # (antialiasing changes nothing when enlarging)
    return F.interpolate(wide, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinks).to(X.dtype)


def _load_split(found, images_name, labels_name):
    images = read_idx(found[images_name])
    labels = read_idx(found[labels_name])
    if images.dtype != torch.uint8 or images.dim() != 3 or tuple(images.shape[1:]) != (28, 28):
        raise IDXError(f"{found[images_name]}: expected uint8 images of shape (N, 28, 28), "
                       f"got {images.dtype} {tuple(images.shape)}")
    if labels.dtype != torch.uint8 or labels.dim() != 1:
        raise IDXError(f"{found[labels_name]}: expected a 1-D uint8 label vector, got {labels.dtype} {tuple(labels.shape)}")
    if len(images) != len(labels):
        raise IDXError(f"{found[images_name]} has {len(images)} images but {found[labels_name]} has "
                       f"{len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(CLASSES):
        raise IDXError(f"{found[labels_name]}: label {int(labels.max())} is out of range 0-9")
    return images, labels.long()


def load_fashion_mnist(data_dir=None, download=True, mirrors=None, md5=None, timeout=30.0):
    """Fashion-MNIST from `data_dir`, or else from the default cache folder (downloaded there
    from the official mirrors when missing and `download` is true). Raises DataNotFoundError
    naming every folder it looked in and how to provide the files."""
    looked = []
    folders = [Path(data_dir).expanduser()] if data_dir is not None else [default_data_dir()]
    for folder in folders:
        found, missing = find_files(folder)
        if not missing:
            break
        looked.append(f"    {folder}: " + ("missing " + ", ".join(m + "[.gz]" for m in missing)
                                              if folder.is_dir() else "no such folder"))
    else:
        if data_dir is not None or not download:
            raise DataNotFoundError(
                "Fashion-MNIST not found. Looked in:\n" + "\n".join(looked) + "\n"
                + _HOW_TO.format(mirror=(mirrors or MIRRORS)[0], cache=default_data_dir()))
        folder = default_data_dir()
        try:
            download_fashion_mnist(folder, mirrors, md5, timeout)
        except DataNotFoundError as error:
            raise DataNotFoundError(
                "Fashion-MNIST not found. Looked in:\n" + "\n".join(looked) + "\n" + str(error)) from None
        found, missing = find_files(folder)
    train = _load_split(found, *FILES["train"])
    val = _load_split(found, *FILES["val"])
    full = (len(train[1]), len(val[1])) == (60000, 10000)
    name = "fashion-mnist" if full else "fashion-mnist subset"
    return Dataset(name, *train, *val, source=str(folder))


def synthetic_dataset(seed=0, n_train=2000, n_val=500, noise=0.35):
    """A generated 10-class stand-in for Fashion-MNIST (1 x 28 x 28 uint8): each class is a
    smooth random template; an example is its template, randomly shifted by up to 2 pixels and
    scaled in brightness, plus Gaussian noise. Deterministic in `seed`; named 'synthetic'."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(10, 1, 7, 7, generator=g)
    templates = F.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    templates = (templates - templates.amin((1, 2), keepdim=True)) / (
        templates.amax((1, 2), keepdim=True) - templates.amin((1, 2), keepdim=True))

    def make(n):
        labels = torch.randint(0, 10, (n,), generator=g)
        X = templates[labels]
        shifts = torch.randint(-2, 3, (n, 2), generator=g)
        X = torch.stack([torch.roll(x, (int(s[0]), int(s[1])), (0, 1)) for x, s in zip(X, shifts)])
        X = X * (0.6 + 0.4 * torch.rand(n, 1, 1, generator=g)) + noise * torch.randn(n, 28, 28, generator=g)
        return (X.clamp(0, 1) * 255).round().to(torch.uint8), labels

    train = make(n_train)
    val = make(n_val)
    return Dataset("synthetic", *train, *val, source=f"generated with seed {seed}, not Fashion-MNIST",
                   classes=tuple(f"synthetic class {i}" for i in range(10)))
