"""cuconv.data: IDX parsing and its errors, the real subset, download from a loopback server, batches."""

import contextlib
import gzip
import hashlib
import http.server
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from cuconv import data

SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-mnist-subset"
needs_subset = pytest.mark.skipif(not (SUBSET / "train-images-idx3-ubyte.gz").is_file(),
                                  reason=f"the Fashion-MNIST subset is not at {SUBSET} (../shared beside the repository)")
NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _idx(array, code=0x08):
    header = struct.pack(">HBB", 0, code, array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    body = array.numpy().astype(array.numpy().dtype.newbyteorder(">")).tobytes()
    return header + body


def _write_set(folder, n_train=5, n_val=3, gz=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    content = {
        "train-images-idx3-ubyte": _idx(torch.randint(0, 256, (n_train, 28, 28), generator=g, dtype=torch.uint8)),
        "train-labels-idx1-ubyte": _idx(torch.randint(0, 10, (n_train,), generator=g, dtype=torch.uint8)),
        "t10k-images-idx3-ubyte": _idx(torch.randint(0, 256, (n_val, 28, 28), generator=g, dtype=torch.uint8)),
        "t10k-labels-idx1-ubyte": _idx(torch.randint(0, 10, (n_val,), generator=g, dtype=torch.uint8)),
    }
    for name, raw in content.items():
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return content


# --- IDX parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_uint8(tmp_path, gz):
    x = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    raw = _idx(x)
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    assert torch.equal(data.read_idx(path), x)


@pytest.mark.parametrize("dtype, code", [(torch.int32, 0x0C), (torch.float32, 0x0D), (torch.int16, 0x0B)])
def test_read_idx_big_endian_types(tmp_path, dtype, code):
    x = (torch.randn(4, 5) * 1000).to(dtype)
    (tmp_path / "x").write_bytes(_idx(x, code))
    assert torch.equal(data.read_idx(tmp_path / "x"), x)


def test_truncated_gzip(tmp_path):
    raw = gzip.compress(_idx(torch.zeros(50, 28, 28, dtype=torch.uint8) + 7))
    (tmp_path / "t.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.IDXError, match=r"t\.gz.*truncated"):
        data.read_idx(tmp_path / "t.gz")


def test_truncated_data(tmp_path):
    raw = _idx(torch.zeros(10, 28, 28, dtype=torch.uint8))
    (tmp_path / "t").write_bytes(raw[:-100])
    with pytest.raises(data.IDXError, match=r"truncated: the header declares shape \(10, 28, 28\)"):
        data.read_idx(tmp_path / "t")
    (tmp_path / "h").write_bytes(raw[:9])
    with pytest.raises(data.IDXError, match="truncated IDX header"):
        data.read_idx(tmp_path / "h")


def test_corrupt_files(tmp_path):
    (tmp_path / "html").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(data.IDXError, match="not an IDX file"):
        data.read_idx(tmp_path / "html")
    (tmp_path / "long").write_bytes(_idx(torch.zeros(2, 3, dtype=torch.uint8)) + b"xx")
    with pytest.raises(data.IDXError, match="2 unexpected bytes"):
        data.read_idx(tmp_path / "long")
    good = gzip.compress(_idx(torch.zeros(2, 3, dtype=torch.uint8)))
    bad = good[:12] + bytes(b ^ 0xFF for b in good[12:20]) + good[20:]
    (tmp_path / "bad.gz").write_bytes(bad)
    with pytest.raises(data.IDXError, match=r"bad\.gz"):
        data.read_idx(tmp_path / "bad.gz")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(data.IDXError, match="too short"):
        data.read_idx(tmp_path / "empty")


@pytest.mark.parametrize("gz", [True, False])
def test_load_folder(tmp_path, gz):
    content = _write_set(tmp_path, gz=gz)
    d = data.load_fashion_mnist(tmp_path)
    assert d.train_images.shape == (5, 28, 28) and d.val_images.shape == (3, 28, 28)
    assert d.train_labels.dtype == torch.int64
    assert d.train_images.flatten().tolist() == list(content["train-images-idx3-ubyte"][16:])
    assert d.name == "fashion-mnist subset"  # not 60,000 / 10,000 images: said so


def test_torchvision_layout(tmp_path):
    _write_set(tmp_path / "FashionMNIST" / "raw")
    assert len(data.load_fashion_mnist(tmp_path)) == 5


def test_images_and_labels_disagree(tmp_path):
    _write_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(torch.zeros(4, dtype=torch.uint8))))
    with pytest.raises(data.IDXError, match="has 5 images but .* has 4 labels"):
        data.load_fashion_mnist(tmp_path)


def test_missing_files_message(tmp_path):
    _write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataNotFoundError) as info:
        data.load_fashion_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "missing t10k-labels-idx1-ubyte[.gz]" in message
    assert "--data-dir" in message and "synthetic" in message


@needs_subset
def test_real_subset():
    sha = {line.split()[1]: line.split()[2] for line in (SUBSET / "README.md").read_text().splitlines()
           if line.startswith("- ") and "idx" in line}
    for name in NAMES:
        assert hashlib.sha256((SUBSET / name).read_bytes()).hexdigest() == sha[name]
    d = data.load_fashion_mnist(SUBSET)
    assert d.train_images.shape == (3443, 28, 28) and d.val_images.shape == (1000, 28, 28)
    assert d.train_labels.bincount().tolist() == [347, 342, 357, 341, 360, 330, 338, 355, 353, 320]
    assert d.val_labels.bincount().tolist() == [105, 87, 113, 96, 98, 98, 97, 97, 114, 95]
    assert d.name == "fashion-mnist subset" and "3443 train / 1000 val" in d.describe()


# --- download from a loopback HTTP server ------------------------------------------------------------


@contextlib.contextmanager
def _serve(folder):
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()


def _md5_table(folder):
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in NAMES}


@pytest.fixture
def mirror_dir(tmp_path):
    folder = tmp_path / "mirror"
    if (SUBSET / NAMES[0]).is_file():  # serve the real files where they are available
        folder.mkdir()
        for name in NAMES:
            shutil.copy(SUBSET / name, folder / name)
    else:
        _write_set(folder, n_train=40, n_val=10)
    return folder


def test_download_from_loopback(tmp_path, mirror_dir, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CUCONV_DATA_DIR", str(cache))
    with _serve(mirror_dir) as (url, requests):
        d = data.load_fashion_mnist(mirrors=["http://127.0.0.1:9/nothing/", url], md5=_md5_table(mirror_dir), timeout=10)
        assert sorted(Path(p).name for p in requests) == sorted(NAMES)
        for name in NAMES:
            assert (cache / name).read_bytes() == (mirror_dir / name).read_bytes()
        assert not list(cache.glob("*.part"))
        reference = data.load_fashion_mnist(mirror_dir)
        assert torch.equal(d.train_images, reference.train_images) and torch.equal(d.val_labels, reference.val_labels)
        # a second call finds the files in the cache and fetches nothing
        data.load_fashion_mnist(mirrors=[url], md5=_md5_table(mirror_dir), timeout=10)
        assert len(requests) == 4


@pytest.mark.parametrize("mirrors, timeout, message", [
    ([], 10, "expected at least one mirror to download from, but got an empty list"),
    (["http://127.0.0.1:9/"], 1e10, "expected a download timeout of more than 0 and at most 86400 seconds, got 10000000000.0"),
    (["http://127.0.0.1:9/"], float("nan"), "at most 86400 seconds, got nan"),
    (["http://127.0.0.1:9/"], None, "at most 86400 seconds, got None"),
])
def test_download_arguments_are_checked(tmp_path, mirrors, timeout, message):
    """No mirrors for a missing file gave a KeyError later (nothing downloaded, no error), a timeout
    past ~9e9 seconds an OverflowError from the socket."""
    with pytest.raises(ValueError, match=message):
        data.download_fashion_mnist(tmp_path, mirrors=mirrors, timeout=timeout)


def test_download_checksum_mismatch(tmp_path, mirror_dir):
    table = _md5_table(mirror_dir)
    table["train-labels-idx1-ubyte.gz"] = "0" * 32
    with _serve(mirror_dir) as (url, _):
        with pytest.raises(data.DataNotFoundError) as info:
            data.download_fashion_mnist(tmp_path / "cache", mirrors=[url], md5=table, timeout=10)
    message = str(info.value)
    assert "train-labels-idx1-ubyte.gz: md5 mismatch" in message and "0" * 32 in message
    assert not (tmp_path / "cache" / "train-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "cache").glob("*.part"))
    assert (tmp_path / "cache" / "train-images-idx3-ubyte.gz").is_file()  # the good ones are kept


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mirror_message(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CUCONV_DATA_DIR", str(cache))
    url = f"http://127.0.0.1:{_closed_port()}/"
    start = time.monotonic()
    with pytest.raises(data.DataNotFoundError) as info:
        data.load_fashion_mnist(mirrors=[url], timeout=5)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "Looked in:" in message and str(cache) in message            # where it looked
    assert url + "train-images-idx3-ubyte.gz" in message and "refused" in message.lower()  # what it tried
    assert "--data-dir" in message and "--dataset synthetic" in message  # how to provide the files
    assert "fashion-mnist.s3-website" in message or url in message


def test_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("CUCONV_DATA_DIR", str(tmp_path / "empty"))
    with pytest.raises(data.DataNotFoundError, match="Looked in"):
        data.load_fashion_mnist(download=False)


def test_official_tables():
    assert data.MIRRORS[0].startswith("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com")
    assert sorted(data.MD5) == sorted(NAMES) and all(len(v) == 32 for v in data.MD5.values())


# --- batches, resize, shuffling ----------------------------------------------------------------------


def test_batches_normalise_and_resize():
    d = data.synthetic_dataset(0, n_train=20, n_val=7)
    X, y = next(d.batches("val", 4))
    assert X.shape == (4, 1, 28, 28) and X.dtype == torch.float32
    torch.testing.assert_close(X[:, 0], d.val_images[:4].float() / 255)
    assert torch.equal(y, d.val_labels[:4])
    X96, _ = next(d.batches("val", 4, resize=96))
    assert X96.shape == (4, 1, 96, 96)
    torch.testing.assert_close(X96, F.interpolate(X, size=(96, 96), mode="bilinear", align_corners=False))
    assert data.resize_batch(X, 28) is X and data.resize_batch(X, None) is X
    assert [len(y) for _, y in d.batches("val", 4)] == [4, 3]


@pytest.mark.parametrize("size", [20, 96])
def test_resize_is_torchvisions_both_ways(size):
    """As the book's transforms.Resize (antialiased): shrinking too (without antialiasing a 20 x 20
    image differed from torchvision's by up to 0.34); and half-type batches (torch's antialiased
    kernel has no half-type version) resize as their float32 values do, then round."""
    functional = pytest.importorskip("torchvision.transforms.functional")
    X = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(size))
    torch.testing.assert_close(data.resize_batch(X, size), functional.resize(X, [size, size], antialias=True))
    for dtype in (torch.bfloat16, torch.float16):
        half = data.resize_batch(X.to(dtype), size)
        assert half.dtype == dtype
        torch.testing.assert_close(half, data.resize_batch(X.to(dtype).float(), size).to(dtype), rtol=0, atol=0)


def test_shuffling_is_reproducible():
    d = data.synthetic_dataset(0, n_train=50, n_val=10)

    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return [torch.cat([y for _, y in d.batches("train", 8, generator=g)]) for _epoch in range(2)]

    a, b, c = order(1), order(1), order(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # a new permutation each epoch
    assert not torch.equal(a[0], c[0])
    assert sorted(a[0].tolist()) == sorted(d.train_labels.tolist())


def test_rank_shards_cover_each_global_batch():
    d = data.synthetic_dataset(0, n_train=23, n_val=9)
    full = list(d.batches("train", 10, generator=torch.Generator().manual_seed(0)))
    shards = [list(d.batches("train", 10, generator=torch.Generator().manual_seed(0), rank=r, world_size=2))
              for r in range(2)]
    # global batches 10, 10, 3 -> shards 5+5, 5+5, 2+1
    for step in range(3):
        torch.testing.assert_close(torch.cat([shards[0][step][0], shards[1][step][0]]), full[step][0])
    val = [torch.cat([y for _, y in d.batches("val", 4, rank=r, world_size=2)]) for r in range(2)]
    assert sorted(torch.cat(val).tolist()) == sorted(d.val_labels.tolist())


def test_synthetic_is_deterministic_and_named():
    a, b, c = data.synthetic_dataset(3), data.synthetic_dataset(3), data.synthetic_dataset(4)
    assert torch.equal(a.train_images, b.train_images) and not torch.equal(a.train_images, c.train_images)
    assert a.name == "synthetic" and "synthetic" in a.describe() and "not Fashion-MNIST" in a.describe()
    assert a.train_images.shape == (2000, 28, 28) and a.train_images.dtype == torch.uint8
    assert set(a.train_labels.tolist()) == set(range(10))
