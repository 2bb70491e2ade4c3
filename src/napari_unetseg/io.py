"""Model files and TIFF input/output.

A model file is a ZIP archive holding only data, never code:

- ``model.json``: format name and version, the :class:`~napari_unetseg.config.ModelConfig`, the
  intensity :class:`~napari_unetseg.normalize.Normalization`, the class values and names, and
  training metadata;
- ``tensors/<name>.npy``: one NumPy array per entry of the network's ``state_dict``.

Loading opens only a regular file that starts as a ZIP archive and is no larger than
:data:`MAX_MODEL_FILE_BYTES`, reads the JSON, checks that the network its config declares fits
:data:`MAX_NETWORK_BYTES`, the machine's free memory and the file (a small file cannot declare a
huge network: no deflate bomb), builds it, checks every tensor's declared size against the
network before reading it, and parses arrays with ``allow_pickle=False``: nothing in the file can
run code. Weights must be finite in float32 and BatchNorm variances non-negative.
Writes go through :func:`napari_unetseg.files.atomic_write` (regular files only, normal file
modes, atomic); an existing file is never replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import io as _io
import json
import os
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ModelConfig
from .files import atomic_write, available_memory, describe_bytes, one_line, open_regular
from .normalize import Normalization
from .postprocess import label_dtype
from .tiff import read_tif, write_tif

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MAX_MODEL_FILE_BYTES", "MAX_NETWORK_BYTES",
           "MODEL_SUFFIX", "ModelFileError", "SavedModel", "atomic_write", "load_model",
           "read_tif", "save_model", "write_tif"]

FORMAT_NAME = "napari-unetseg-model"
FORMAT_VERSION = 1
MODEL_SUFFIX = ".unetseg"
#: Largest network (bytes of weights) a model file may declare: 4 GiB, 1e9 float32 weights,
#: 30 times the "paper" U-Net. Networks beyond half the machine's free memory are refused too.
MAX_NETWORK_BYTES = 4 << 30
#: Largest model file read: the weights of the largest network in float64, plus headers.
MAX_MODEL_FILE_BYTES = 2 * MAX_NETWORK_BYTES + (64 << 20)
_MAX_JSON_BYTES = 1 << 20
#: A network may need at most this many times the file's size: float32 weights barely
#: compress (a saved file is ~0.9x its network), zeros compress ~1000-fold (a deflate bomb).
_MAX_EXPANSION = 16
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_ENTRIES = 10_000  # a network has a few hundred tensors
_MAX_DIRECTORY_BYTES = 16 << 20


class ModelFileError(ValueError):
    """A file is not a readable napari-unetseg model (corrupt, foreign, or too new)."""


@dataclass
class SavedModel:
    """A network with everything needed to apply it to new images."""

    model: Any  # torch.nn.Module (SegmentationNet)
    config: ModelConfig
    normalization: Normalization
    class_values: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- model files


def save_model(
    path: str | os.PathLike,
    model: Any,
    *,
    normalization: Normalization,
    class_values: list[int] | None = None,
    class_names: list[str] | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    float16: bool = False,
) -> Path:
    """Write ``model`` (a network from :func:`napari_unetseg.build_model`) to a model file.

    ``float16`` stores the floating-point tensors in half precision (half the size, as the
    bundled model is shipped); :func:`load_model` restores float32.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False (the file is left untouched).
    TypeError
        ``model`` has no ``config`` (it was not built by ``build_model``).
    """
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(
            f"model must be built by napari_unetseg.build_model (with a .config), "
            f"got {type(model).__name__}"
        )
    if not isinstance(normalization, Normalization):
        raise TypeError(f"normalization must be a Normalization, got {type(normalization)}")
    k = config.classes
    values = list(range(k)) if class_values is None else [int(v) for v in class_values]
    names = [str(v) for v in values] if class_names is None else [str(n) for n in class_names]
    if len(values) != k or len(names) != k:
        raise ValueError(
            f"need {k} class values and names for a {k}-class model, "
            f"got {len(values)} values and {len(names)} names"
        )
    state = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    if float16:
        state = {k: t.half() if t.is_floating_point() else t for k, t in state.items()}
        bad = [k for k, t in state.items() if t.is_floating_point() and not t.isfinite().all()]
        if bad:
            raise ValueError(f"tensors {bad} do not fit in float16; save with float16=False")
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "normalization": normalization.to_dict(),
        "class_values": values,
        "class_names": names,
        "metadata": _jsonable(metadata or {}),
        "tensors": {
            name: {"shape": list(t.shape), "dtype": str(t.dtype)} for name, t in state.items()
        },
    }
    with atomic_write(path, overwrite=overwrite) as fh, zipfile.ZipFile(
        fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1
    ) as zf:
        zf.writestr("model.json", json.dumps(header, indent=1, sort_keys=True))
        for name, tensor in state.items():
            buf = _io.BytesIO()
            np.lib.format.write_array(buf, _to_numpy(tensor), allow_pickle=False)
            zf.writestr(f"tensors/{name}.npy", buf.getvalue())
    return Path(path)


def load_model(path: str | os.PathLike, device: str = "cpu") -> SavedModel:
    """Read a model file written by :func:`save_model` without executing any code from it.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        No such file, or the path is a folder.
    OSError
        The file cannot be read (permission, I/O error).
    ModelFileError (a ValueError)
        The file is corrupt, truncated, not a model file, written by a newer format version, or
        declares a network larger than the file can hold. Nothing else is raised for any
        content of the file (``tests/test_fuzz_model_file.py``).
    """
    path = Path(path)
    blob = _read_model_bytes(path)  # real I/O errors (permission, disk) surface here, as OSError
    try:
        with zipfile.ZipFile(_io.BytesIO(blob), "r") as zf:
            header = _read_header(zf, path)
            config, normalization = _parse_header(header, path)
            model = _build_and_fill(zf, config, header, path, len(blob))
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError, OSError, zlib.error,
            struct.error) as e:  # in memory, so an OSError here is a malformed archive
        raise ModelFileError(f"{path} is not a readable napari-unetseg model file: {e}") from e
    except (ValueError, TypeError, RuntimeError, NotImplementedError, OverflowError,
            RecursionError) as e:
        raise ModelFileError(
            f"{path} is a damaged napari-unetseg model file: {one_line(e)}") from e
    model.to(device).eval()
    return SavedModel(
        model=model,
        config=config,
        normalization=normalization,
        class_values=[int(v) for v in header["class_values"]],
        class_names=[str(n) for n in header["class_names"]],
        metadata=dict(header.get("metadata") or {}),
    )


def _read_model_bytes(path: Path) -> bytes:
    """The whole file, if it is a regular file, a ZIP and at most MAX_MODEL_FILE_BYTES."""
    what = f"a {MODEL_SUFFIX} model file"
    with open_regular(path, what) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > MAX_MODEL_FILE_BYTES:
            raise ModelFileError(f"{path} is {describe_bytes(size)}, larger than any model file "
                                 f"napari-unetseg reads ({describe_bytes(MAX_MODEL_FILE_BYTES)})")
        if fh.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise ModelFileError(f"{path} is not a readable napari-unetseg model file (not a ZIP "
                                 "archive)")
        blob = _ZIP_MAGIC + fh.read(MAX_MODEL_FILE_BYTES + 1 - len(_ZIP_MAGIC))
    if len(blob) > MAX_MODEL_FILE_BYTES:  # it grew while being read
        raise ModelFileError(f"{path} is larger than any model file napari-unetseg reads")
    _check_directory(blob, path)
    return blob


def _check_directory(blob: bytes, path: Path) -> None:
    """Refuse a ZIP whose central directory declares more entries or bytes than a model file
    has, before ``zipfile`` builds an object per entry (a million empty entries fit in 100 MB)."""
    end = blob.rfind(b"PK\x05\x06", max(0, len(blob) - (1 << 16) - 22))
    if end < 0 or end + 22 > len(blob):
        return  # no end record: zipfile reports the damage
    entries, size = struct.unpack_from("<HI", blob, end + 10)
    locator = end - 20
    if (entries == 0xFFFF or size == 0xFFFFFFFF) and locator >= 0 and blob[
            locator : locator + 4] == b"PK\x06\x07":  # ZIP64: the counts are in its record
        at = struct.unpack_from("<Q", blob, locator + 8)[0]
        if blob[at : at + 4] == b"PK\x06\x06" and at + 56 <= len(blob):
            entries, size = struct.unpack_from("<QQ", blob, at + 32)
    if entries > _MAX_ENTRIES or size > _MAX_DIRECTORY_BYTES:
        raise ModelFileError(f"{path} is not a napari-unetseg model file: its ZIP directory "
                             f"declares {entries} entries in {describe_bytes(size)} (at most "
                             f"{_MAX_ENTRIES} in {describe_bytes(_MAX_DIRECTORY_BYTES)})")


def _read_header(zf: zipfile.ZipFile, path: Path) -> dict[str, Any]:
    try:
        info = zf.getinfo("model.json")
    except KeyError:
        raise ModelFileError(
            f"{path} is not a napari-unetseg model file (no model.json inside)"
        ) from None
    if info.file_size > _MAX_JSON_BYTES:
        raise ModelFileError(f"{path}: model.json is implausibly large ({info.file_size} bytes)")
    try:
        header = json.loads(zf.read(info).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: model.json is not valid JSON ({e})") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path} is not a napari-unetseg model file (wrong format name)")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{path}: format version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written with model format version {version}; this napari-unetseg "
            f"reads versions up to {FORMAT_VERSION}: please upgrade napari-unetseg"
        )
    if version < 1:
        raise ModelFileError(f"{path}: unknown model format version {version}")
    return header


def _parse_header(header: dict[str, Any], path: Path) -> tuple[ModelConfig, Normalization]:
    config = ModelConfig.from_dict(header.get("config"))
    normalization = Normalization.from_dict(header.get("normalization") or {})
    values, names = header.get("class_values"), header.get("class_names")
    if not isinstance(values, list) or not isinstance(names, list):
        raise ModelFileError(f"{path}: class_values/class_names missing")
    if len(values) != config.classes or len(names) != config.classes:
        raise ModelFileError(f"{path}: {len(values)} class values for {config.classes} classes")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ModelFileError(f"{path}: class values must be integers")
    try:
        label_dtype(values)
    except ValueError as e:
        raise ModelFileError(f"{path}: class values: {e}") from None
    if not isinstance(header.get("metadata", {}), dict):
        raise ModelFileError(f"{path}: metadata must be a JSON object")
    return config, normalization


def _build_and_fill(
    zf: zipfile.ZipFile, config: ModelConfig, header: dict, path: Path, size: int
) -> Any:
    import torch

    from .models import build_model

    with torch.device("meta"):  # sizes only: nothing is allocated yet
        expected = build_model(config).state_dict()
    declared = header.get("tensors")
    if not isinstance(declared, dict) or set(declared) != set(expected):
        raise ModelFileError(f"{path}: its tensors do not match the network its config describes")
    _check_network_size(sum(t.numel() * t.element_size() for t in expected.values()), size,
                        path)
    loaded = {}
    for name, ref in expected.items():
        try:
            info = zf.getinfo(f"tensors/{name}.npy")
        except KeyError:
            raise ModelFileError(f"{path}: tensor {name!r} is missing") from None
        limit = ref.numel() * 8 + 4096  # header + at most 8 bytes an element
        if info.file_size > limit:
            raise ModelFileError(f"{path}: tensor {name!r} is larger than the network needs")
        arr = _read_npy(zf.read(info), tuple(ref.shape), f"{path}: tensor {name!r}")
        loaded[name] = torch.from_numpy(arr).to(ref.dtype)
        if ref.is_floating_point():
            _check_weights(arr, loaded[name], name, path)
    model = build_model(config)
    model.load_state_dict(loaded, strict=True)
    return model


def _check_network_size(need: int, size: int, path: Path) -> None:
    """Refuse a network larger than the limit, the machine, or what the file can hold."""
    free = available_memory()
    limit = MAX_NETWORK_BYTES if free is None else min(MAX_NETWORK_BYTES, free // 2)
    if need > limit:
        raise ModelFileError(
            f"{path}: its config declares a network of {describe_bytes(need)}; napari-unetseg "
            f"loads networks up to {describe_bytes(limit)} here (io.MAX_NETWORK_BYTES, or half "
            "the free memory)")
    if need > _MAX_EXPANSION * size:
        raise ModelFileError(f"{path}: its config declares a network of {describe_bytes(need)}, "
                             f"more than a file of {describe_bytes(size)} can hold")


def _check_weights(arr: np.ndarray, tensor: Any, name: str, path: Path) -> None:
    """Finite after the cast to the network's dtype; BatchNorm variances not negative."""
    import torch

    what = f"{path}: tensor {name!r}"
    if not torch.isfinite(tensor).all():
        finite = bool(np.isfinite(arr).all())
        raise ModelFileError(f"{what} holds values that overflow {tensor.dtype}" if finite
                             else f"{what} holds NaN or infinite values")
    if name.endswith("running_var") and bool((tensor < 0).any()):
        raise ModelFileError(f"{what} holds a negative BatchNorm variance")


def _read_npy(data: bytes, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Parse one ``.npy`` record whose header must declare ``shape`` and a numeric dtype.

    The header is checked before any array is allocated (a header may declare any size), and
    the data is never unpickled.
    """
    buf = _io.BytesIO(data)
    version = np.lib.format.read_magic(buf)
    if version not in ((1, 0), (2, 0)):
        raise ModelFileError(f"{what} uses unsupported .npy version {version}")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else (
        np.lib.format.read_array_header_2_0)
    try:  # numpy tokenizes the header text: damaged text raises more than ValueError
        declared, fortran, dtype = read(buf)
    except (ValueError, TypeError, SyntaxError, tokenize.TokenError, RecursionError) as e:
        raise ModelFileError(f"{what} has a malformed .npy header: {e}") from e
    if tuple(declared) != shape:
        raise ModelFileError(f"{what} has shape {tuple(declared)}, the network needs {shape}")
    if dtype.kind not in "fiub" or dtype.hasobject or dtype.itemsize > 8:
        raise ModelFileError(f"{what} has unsupported dtype {dtype}")
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - buf.tell() < count * dtype.itemsize:
        raise ModelFileError(f"{what} is truncated")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell())
    arr = arr.reshape(shape, order="F" if fortran else "C")
    return np.array(arr, dtype=dtype.newbyteorder("="), order="C")  # a writable copy


def _to_numpy(tensor: Any) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def _jsonable(obj: Any) -> Any:
    """Keep only what JSON can hold (metadata is informative, never executable)."""
    try:
        return json.loads(json.dumps(obj, default=str))
    except (TypeError, ValueError):
        return {}
