"""Hostile and careless paths, through the API and the CLI: special files (devices, FIFOs,
sockets, links, folders) as outputs and inputs, an output that is an input, file modes and the
umask, unbounded and amplified reads (a model path to ``/dev/zero``, a deflate bomb, a TIFF that
declares terabytes), damaged and mixed TIFFs, zarr outputs that are not zarr stores.

Nothing here writes to a real device: ``/dev/null`` appears only where the code must refuse it
before opening it, and ``os.open``/``os.replace``/``os.link`` are guarded so that a regression
fails the test instead of replacing the device. FIFOs and sockets are made in ``tmp_path``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unetseg import ModelConfig, Normalization, build_model, tiff
from napari_unetseg import io as uio
from napari_unetseg.cli import main
from napari_unetseg.files import SpecialFileError
from napari_unetseg.io import ModelFileError, load_model, read_tif, save_model, write_tif

MC = ModelConfig(arch="unet", depth=2, width=4)
TINY = ["--iterations", "1", "--depth", "2", "--width", "4", "--patch-size", "16",
        "--batch-size", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def no_hang():
    """A read or write that blocks (a FIFO without a peer) fails the test instead of hanging."""

    def timeout(*a):
        raise TimeoutError("blocked on a special file")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(autouse=True)
def guard_devices(monkeypatch):
    """Opening, replacing or linking over anything under /dev for writing fails the test."""
    real_open, real_replace, real_link = os.open, os.replace, os.link

    def bad(p) -> bool:
        return os.path.realpath(p).startswith("/dev/")

    def guarded_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and bad(path):
            raise AssertionError(f"opened {path} for writing")
        return real_open(path, flags, *a, **k)

    def guarded_replace(src, dst, *a, **k):
        if bad(dst):
            raise AssertionError(f"replaced {dst}")
        return real_replace(src, dst, *a, **k)

    def guarded_link(src, dst, *a, **k):
        if bad(dst):
            raise AssertionError(f"linked over {dst}")
        return real_link(src, dst, *a, **k)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "replace", guarded_replace)
    monkeypatch.setattr(os, "link", guarded_link)


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    save_model(d / "m.unetseg", build_model(MC).eval(), normalization=Normalization())
    img = (np.random.default_rng(0).random((2, 32, 32)) * 255).astype(np.uint8)
    lab = np.zeros((2, 32, 32), np.uint8)
    lab[..., :8], lab[..., -8:] = 1, 2
    tifffile.imwrite(d / "img.tif", img, photometric="minisblack")
    tifffile.imwrite(d / "lab.tif", lab, photometric="minisblack")
    return d


def _cli(capsys, argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(rc: int, out: str, err: str, pattern: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and "Traceback" not in err and len(lines) == 1, err
    assert pattern in lines[0], lines[0]
    return lines[0]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> tuple[Path, socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return path, s


# ---------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("writer", ["tif", "model"])
def test_special_files_are_never_written_over(tmp_path, overwrite, writer):
    fifo = _fifo(tmp_path / "fifo")
    sock, s = _socket(tmp_path / "sock")
    target = tmp_path / "target.tif"
    target.write_bytes(b"keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    devlink = tmp_path / "devnull"
    devlink.symlink_to("/dev/null")
    before = _listing(tmp_path)
    cases = [(fifo, "is a FIFO (named pipe), not a regular file"),
             (sock, "is a socket, not a regular file"),
             (Path("/dev/null"), "/dev/null is a character device, not a regular file"),
             (link, "is a symbolic link (to"), (dangling, "is a symbolic link"),
             (devlink, "is a symbolic link (to /dev/null)")]
    try:
        for path, message in cases:
            with pytest.raises(SpecialFileError, match=message.replace("(", r"\(").replace(
                    ")", r"\)")):
                if writer == "tif":
                    write_tif(path, np.zeros((4, 4), np.uint8), overwrite=overwrite)
                else:
                    save_model(path, build_model(MC), normalization=Normalization(),
                               overwrite=overwrite)
    finally:
        s.close()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert os.path.islink(link) and target.read_bytes() == b"keep"
    assert os.path.islink(devlink) and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert _listing(tmp_path) == before  # no temporary file left


def test_cli_refuses_special_outputs_with_overwrite(d, tmp_path, capsys):
    fifo = _fifo(tmp_path / "out.tif")
    link = tmp_path / "m2.unetseg"
    link.symlink_to(d / "m.unetseg")
    before = (d / "m.unetseg").read_bytes()
    for argv, message in [
        (["predict", d / "m.unetseg", d / "img.tif", "-o", fifo, "--overwrite"], "FIFO"),
        (["predict", d / "m.unetseg", d / "img.tif", "-o", "/dev/null", "--overwrite"],
         "/dev/null is a character device"),
        (["train", d / "img.tif", d / "lab.tif", "-o", link, *TINY, "--overwrite"],
         "symbolic link"),
    ]:
        _one_line(*_cli(capsys, argv), message)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and (d / "m.unetseg").read_bytes() == before


@pytest.mark.parametrize("which", ["image", "model", "labels", "resume", "hardlink"])
def test_output_that_is_an_input_is_refused_even_with_overwrite(d, tmp_path, capsys, which):
    img, lab, model = d / "img.tif", d / "lab.tif", d / "m.unetseg"
    keep = {p: p.read_bytes() for p in (img, lab, model)}
    if which == "hardlink":
        out = tmp_path / "alias.tif"
        os.link(img, out)
        argv = ["predict", model, img, "-o", out]
    elif which in ("image", "model"):
        out = img if which == "image" else model
        argv = ["predict", model, img, "-o", out]
    else:
        out = lab if which == "labels" else model
        argv = ["train", img, lab, "-o", out, *TINY, "--labels-mode", "dense"]
        if which == "resume":
            argv += ["--resume", model, "--depth", "2", "--width", "4"]
    _one_line(*_cli(capsys, [*argv, "--overwrite"]), "is the same file as the input")
    assert {p: p.read_bytes() for p in keep} == keep


# ---------------------------------------------------------------------------- modes


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_files_get_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    write_tif(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))
    save_model(tmp_path / "m.unetseg", build_model(MC), normalization=Normalization())
    assert _mode(tmp_path / "a.tif") == _mode(tmp_path / "m.unetseg") == 0o666 & ~mask


@pytest.mark.parametrize("mode", [0o664, 0o600, 0o640, 0o444])
def test_overwritten_files_keep_their_mode_and_owner(tmp_path, umask, mode):
    umask(0o077)
    for path, write in [
        (tmp_path / "a.tif", lambda p: write_tif(p, np.ones((4, 4), np.uint8), overwrite=True)),
        (tmp_path / "m.unetseg", lambda p: save_model(p, build_model(MC), overwrite=True,
                                                      normalization=Normalization())),
    ]:
        path.write_bytes(b"old")
        os.chmod(path, mode)
        if os.geteuid() == 0:  # root gives files away: the owner must stay too
            os.chown(path, 1234, 5678)
        write(path)
        assert path.read_bytes() != b"old" and _mode(path) == mode
        if os.geteuid() == 0:
            assert (os.stat(path).st_uid, os.stat(path).st_gid) == (1234, 5678)


def test_cli_outputs_get_the_umask_mode(d, tmp_path, capsys, umask):
    umask(0o002)
    out = tmp_path / "p.tif"
    rc, _, err = _cli(capsys, ["predict", d / "m.unetseg", d / "img.tif", "-o", out, "--tile",
                               "32", "--device", "cpu"])
    assert rc == 0, err
    assert _mode(out) == 0o664  # every output was 0600 before


# ---------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("what", ["fifo", "socket", "dev-zero", "link-to-dev-zero", "folder"])
def test_special_inputs_are_refused_without_reading(d, tmp_path, capsys, what):
    path = tmp_path / f"in-{what}"
    s = None
    if what == "fifo":
        _fifo(path)  # no writer: reading it would block forever
    elif what == "socket":
        path, s = _socket(path)
    elif what == "dev-zero":
        path = Path("/dev/zero")
    elif what == "link-to-dev-zero":
        path.symlink_to("/dev/zero")  # read 3.8 GB in 6 s before
    else:
        path.mkdir()
    kind = IsADirectoryError if what == "folder" else SpecialFileError
    try:
        with pytest.raises(kind, match="a directory|not a regular file"):
            load_model(path)
        with pytest.raises(kind, match="a directory|not a regular file"):
            read_tif(path)
        for argv in (["predict", path, d / "img.tif", "-o", tmp_path / "o.tif"],
                     ["predict", d / "m.unetseg", path, "-o", tmp_path / "o.tif"],
                     ["train", d / "img.tif", path, "-o", tmp_path / "o.unetseg", *TINY]):
            _one_line(*_cli(capsys, argv), str(path))
    finally:
        if s is not None:
            s.close()
    assert not (tmp_path / "o.tif").exists() and not (tmp_path / "o.unetseg").exists()


def test_model_file_larger_than_the_limit_is_refused_by_size(tmp_path, monkeypatch):
    path = tmp_path / "big.unetseg"
    with open(path, "wb") as fh:  # a sparse 20 GB file: nothing may read it
        fh.write(b"PK\x03\x04")
        fh.truncate(20 * 10**9)
    real, reads = uio.open_regular, []

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            reads.append(n)
            return self.fh.read(n)

        def fileno(self):
            return self.fh.fileno()

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

    monkeypatch.setattr(uio, "open_regular", lambda p, what: Spy(real(p, what)))
    with pytest.raises(ModelFileError, match=r"is 20\.0 GB, larger than any model file"):
        load_model(path)
    assert reads == []  # refused on its size, before reading a byte


def test_model_file_that_is_not_a_zip_is_refused_after_four_bytes(tmp_path):
    path = tmp_path / "x.unetseg"
    path.write_bytes(b"\x89HDF" + b"\0" * 100)
    with pytest.raises(ModelFileError, match="not a ZIP archive"):
        load_model(path)


def test_a_zip_directory_of_many_entries_is_refused_before_parsing(tmp_path, monkeypatch):
    """A million empty entries fit in 100 MB and would make a million ZipInfo objects."""
    path = tmp_path / "many.unetseg"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(10_001):
            zf.writestr(f"{i}", b"")
    monkeypatch.setattr(zipfile.ZipFile, "__init__", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(ModelFileError, match="its ZIP directory declares 10001 entries"):
        load_model(path)


def test_an_output_under_a_file_is_one_clear_error(d, tmp_path):
    with pytest.raises(NotADirectoryError, match=r"img\.tif is not a folder"):
        write_tif(d / "img.tif" / "out.tif", np.zeros((4, 4), np.uint8))


def _bomb(path: Path, config: ModelConfig) -> Path:
    """A model file declaring ``config`` with all-zero weights: deflate shrinks them ~1000x."""
    with torch.device("meta"):
        state = build_model(config).state_dict()
    header = {"format": "napari-unetseg-model", "version": 1, "config": config.to_dict(),
              "normalization": Normalization().to_dict(),
              "class_values": list(range(config.classes)),
              "class_names": [str(i) for i in range(config.classes)], "metadata": {},
              "tensors": {n: {"shape": list(t.shape), "dtype": "torch.float32"}
                          for n, t in state.items()}}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("model.json", json.dumps(header))
        for name, t in state.items():
            buf = io.BytesIO()
            np.save(buf, np.zeros(tuple(t.shape), np.float32))
            zf.writestr(f"tensors/{name}.npy", buf.getvalue())
    return path


def test_a_small_deflate_bomb_is_refused_before_the_network_is_built(tmp_path, monkeypatch):
    cfg = ModelConfig(arch="unet", depth=4, width=16)  # 8 MB of zeros in a file of ~30 kB
    path = _bomb(tmp_path / "bomb.unetseg", cfg)
    assert path.stat().st_size < 100_000
    from napari_unetseg import models

    real = models.build_model

    def build(c):  # sizes on the meta device are fine; real memory is not
        if torch.empty(0).device.type != "meta":
            pytest.fail("the network was built")
        return real(c)

    monkeypatch.setattr(models, "build_model", build)
    with pytest.raises(ModelFileError, match=r"declares a network of .* more than a file of "
                                             r".* can hold"):
        load_model(path)


def test_networks_beyond_the_limit_are_refused_with_the_limit_named(tmp_path, monkeypatch):
    path = save_model(tmp_path / "m.unetseg", build_model(MC), normalization=Normalization())
    monkeypatch.setattr(uio, "MAX_NETWORK_BYTES", 1000)
    with pytest.raises(ModelFileError, match=r"loads networks up to 1\.0 kB here"):
        load_model(path)
    monkeypatch.setattr(uio, "MAX_NETWORK_BYTES", 4 << 30)
    monkeypatch.setattr(uio, "available_memory", lambda: 2000)  # a machine with 2 kB free
    with pytest.raises(ModelFileError, match=r"loads networks up to 1\.0 kB here"):
        load_model(path)


def _huge_tiff(path: Path, width: int, height: int, bits: int = 16) -> Path:
    """One deflate-compressed page declaring ``height x width``, with 64 bytes of data."""
    data = zlib.compress(b"\0" * 64)
    tags = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 8), (262, 3, 1),
            (273, 4, 8 + 2 + 12 * 9 + 4), (277, 3, 1), (278, 4, height), (279, 4, len(data))]
    out = b"II*\0" + struct.pack("<IH", 8, len(tags))
    for code, kind, value in tags:
        out += struct.pack("<HHIHH" if kind == 3 else "<HHII", code, kind, 1, value,
                           *([0] if kind == 3 else []))
    path.write_bytes(out + struct.pack("<I", 0) + data)
    return path


def test_tiff_declaring_more_than_memory_is_refused_before_reading(tmp_path, monkeypatch,
                                                                     capsys, d):
    path = _huge_tiff(tmp_path / "huge.tif", 2**31, 2**31)  # 9.2e18 bytes declared, 150 B file
    monkeypatch.setattr(tifffile.TiffFile, "asarray", lambda *a, **k: pytest.fail("read it"))
    with pytest.raises(ValueError, match=r"declares an image of 9223372\.0 TB \(shape "
                                         r"\(2147483648, 2147483648\), uint16\)"):
        read_tif(path)
    _one_line(*_cli(capsys, ["predict", d / "m.unetseg", path, "-o", tmp_path / "o.tif"]),
              "declares an image of")
    monkeypatch.setattr(tiff, "MAX_IMAGE_BYTES", 100)  # an explicit limit
    with pytest.raises(ValueError, match=r"image of 2\.0 kB .* \(100 bytes\)"):
        read_tif(d / "img.tif")


# ---------------------------------------------------------------------------- damaged TIFFs


@pytest.fixture(scope="module")
def stacks(tmp_path_factory) -> dict[str, Path]:
    t = tmp_path_factory.mktemp("tiffs")
    a = (np.random.default_rng(0).random((5, 64, 64)) * 255).astype(np.uint8)
    out = {}
    for name, kw in [("zlib", {"compression": "zlib", "photometric": "minisblack"}),
                     ("imagej", {"imagej": True}), ("plain", {"photometric": "minisblack"}),
                     ("generic", {"photometric": "minisblack", "metadata": None})]:
        out[name] = t / f"{name}.tif"
        tifffile.imwrite(out[name], a, **kw)
    blob = out["zlib"].read_bytes()
    out["zlib-truncated"] = t / "zt.tif"
    out["zlib-truncated"].write_bytes(blob[: len(blob) // 2])
    corrupt = bytearray(blob)
    for i in range(300, 2000):
        corrupt[i] ^= 0x55
    out["zlib-corrupt"] = t / "zc.tif"
    out["zlib-corrupt"].write_bytes(bytes(corrupt))
    for name in ("imagej", "plain", "generic"):
        blob = out[name].read_bytes()
        out[f"{name}-truncated"] = t / f"{name}t.tif"
        out[f"{name}-truncated"].write_bytes(blob[: len(blob) // 2])
    out["mixed"] = t / "mixed.tif"
    with tifffile.TiffWriter(out["mixed"]) as w:
        w.write(a[0], photometric="minisblack")
        w.write(a[:, :32, :32], photometric="minisblack")
    out["mixed-pages"] = t / "mixedp.tif"
    with tifffile.TiffWriter(out["mixed-pages"]) as w:
        for i in range(3):
            w.write(a[i], photometric="minisblack", metadata=None)
        w.write(a[0, :32], photometric="minisblack", metadata=None)
    return out


@pytest.mark.parametrize("name", ["zlib", "imagej", "plain", "generic"])
def test_whole_stacks_read(stacks, name):
    assert read_tif(stacks[name]).shape == (5, 64, 64)


@pytest.mark.parametrize(("name", "message"), [
    ("zlib-truncated", "is a damaged TIFF file: invalid page offset"),
    ("zlib-corrupt", "is not a readable TIFF file: "),  # zlib or libdeflate says why
    ("imagej-truncated", "is a damaged TIFF file: ImageJ series metadata invalid"),
    ("plain-truncated", "is a damaged TIFF file"),
    ("generic-truncated", "is a damaged TIFF file"),
    ("mixed", "holds 2 images of different shapes or types ((64, 64) uint8, (5, 32, 32) "
              "uint8)"),
    ("mixed-pages", "holds 2 images of different shapes or types ((3, 64, 64) uint8, (32, "
                    "64) uint8)"),
])
def test_damaged_and_mixed_tiffs_are_one_clear_error(stacks, capsys, d, tmp_path, name,
                                                     message):
    with pytest.raises(ValueError) as err:
        read_tif(stacks[name])
    assert type(err.value) is ValueError and message in str(err.value), str(err.value)
    assert str(stacks[name]) in str(err.value)
    line = _one_line(*_cli(capsys, ["predict", d / "m.unetseg", stacks[name], "-o",
                                    tmp_path / "o.tif"]), message)
    assert "<tifffile" not in line
    assert not (tmp_path / "o.tif").exists()


# ---------------------------------------------------------------------------- zarr outputs


@pytest.fixture
def zarr_files(d, tmp_path):
    pytest.importorskip("zarr")
    return d, tmp_path


@pytest.mark.parametrize("case", ["not-a-store", "missing-parent", "block-0", "file",
                                  "link", "input"])
def test_zarr_outputs_that_cannot_be_written_create_nothing(zarr_files, capsys, case):
    import zarr

    d, t = zarr_files
    src = t / "in.zarr"
    zarr.create_array(str(src), shape=(2, 32, 32), chunks=(1, 32, 32), dtype="uint8")[...] = 7
    out, extra, message = t / "out.zarr", [], ""
    if case == "not-a-store":
        out = t / "photos.zarr"
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"jpeg")
        message = "is a folder that is not a zarr store"
    elif case == "missing-parent":
        out = t / "no" / "such" / "out.zarr"
        message = "does not exist (it is not created)"
    elif case == "block-0":
        extra, message = ["--block", "0,0,0"], "--block must be three integers >= 1"
    elif case == "file":
        out = t / "file.zarr"
        out.write_bytes(b"x")
        message = "is a file, not a zarr store"
    elif case == "link":
        out = t / "link.zarr"
        out.symlink_to(src)
        message = "is a symbolic link"
    else:
        out, message = src, "is (inside) the input"
    before = sorted(str(p) for p in t.rglob("*"))
    _one_line(*_cli(capsys, ["predict", d / "m.unetseg", src, "-o", out, "--device", "cpu",
                             *extra]), message)
    assert sorted(str(p) for p in t.rglob("*")) == before  # nothing created, nothing changed
