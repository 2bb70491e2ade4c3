"""Fuzzing ``io.load_model``: every mutated model file loads (and the network runs) or raises
``ModelFileError``; no other exception, no crash, no code from the file ever runs.

Mutations start from real saved files: raw byte flips, truncations, insertions and deletions;
byte mutations of one archive member inside an otherwise valid ZIP (so the CRC passes and the
JSON and ``.npy`` parsers see the damage); ``model.json`` fields set to wrong types, huge or
negative values; and archive surgery (renamed, dropped, swapped and duplicated entries,
object-dtype arrays carrying a pickle payload, huge declared shapes). Derandomized, so CI
replays the same examples.
"""

from __future__ import annotations

import builtins
import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from napari_unetseg import ModelConfig, Normalization, build_model
from napari_unetseg.io import ModelFileError, load_model, save_model

SETTINGS = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
BASE_CFG = ModelConfig(arch="unet", depth=1, width=2, classes=2)


class _Payload:
    """Unpickling this creates the marker file: proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with the marker path and the base files: deflated and stored archives."""
    d = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    model = build_model(BASE_CFG).eval()
    deflated = save_model(d / "base.unetseg", model, normalization=Normalization(3.0, 200.0),
                          class_values=[0, 255], metadata={"steps": 7})
    members = _members(deflated.read_bytes())
    stored = d / "stored.unetseg"
    stored.write_bytes(_zip(members, zipfile.ZIP_STORED))
    return _Work(dir=d, marker=d / "PWNED", members=members,
                 bases=[deflated.read_bytes(), stored.read_bytes()])


class _Work(dict):
    """The fixture's data (a dict with a short repr, for readable falsifying examples)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)

    def __repr__(self) -> str:
        return "work"


def _members(blob: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return [(n, zf.read(n)) for n in zf.namelist()]


def _zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression=compression) as zf:
        warnings.simplefilter("ignore")  # duplicate names are one of the mutations
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _check(work: dict, blob: bytes) -> str:
    """Load ``blob`` as a model file: 'loaded' (and it ran) or 'refused'; anything else fails."""
    path = work["dir"] / "case.unetseg"
    path.write_bytes(blob)
    try:
        saved = load_model(path)
    except ModelFileError as e:
        assert str(path) in str(e)  # the message names the file
        outcome = "refused"
    else:
        cfg = saved.config
        x = torch.rand(1, cfg.in_channels, 2**cfg.depth * 2, 2**cfg.depth * 2)
        with torch.no_grad():
            out = saved.model(x)
        assert out.shape == (1, cfg.classes, *x.shape[-2:])
        assert len(saved.class_values) == cfg.classes
        outcome = "loaded"
    assert not work["marker"].exists(), "code from the model file was executed"
    return outcome


# ---------------------------------------------------------------------------- byte mutations

_OP = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]),
                st.floats(0, 1), st.integers(0, 255), st.integers(1, 64))


def _mutate(blob: bytes, ops: list[tuple[str, float, int, int]]) -> bytes:
    b = bytearray(blob)
    for kind, where, byte, n in ops:
        i = min(int(where * len(b)), max(len(b) - 1, 0))
        if not b:
            break
        if kind == "flip":
            b[i] ^= 1 << (byte % 8)
        elif kind == "set":
            b[i] = byte
        elif kind == "insert":
            b[i:i] = bytes([byte]) * n
        elif kind == "delete":
            del b[i : i + n]
        elif kind == "truncate":
            del b[i:]
        else:  # duplicate a chunk in place
            b[i:i] = b[i : i + n]
    return bytes(b)


@settings(max_examples=1000, **SETTINGS)
@given(base=st.integers(0, 1), ops=st.lists(_OP, min_size=1, max_size=4))
def test_raw_byte_mutations(work, base, ops):
    event(_check(work, _mutate(work["bases"][base], ops)))


@settings(max_examples=600, **SETTINGS)
@given(which=st.floats(0, 1), ops=st.lists(_OP, min_size=1, max_size=3))
def test_member_byte_mutations_inside_a_valid_zip(work, which, ops):
    members = list(work["members"])
    k = min(int(which * len(members)), len(members) - 1)
    members[k] = (members[k][0], _mutate(members[k][1], ops))
    event(_check(work, _zip(members)))


# ---------------------------------------------------------------------------- model.json fields

_NASTY = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 2**31, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3),
                                                              st.integers(), max_size=2),
    st.sampled_from(["unet", "unetpp", "resunet", "valid", "same", "basic"]),
)
_FIELDS = [
    ("version",), ("format",), ("config",), ("normalization",), ("class_values",),
    ("class_names",), ("metadata",), ("tensors",),
    *[("config", f) for f in ("arch", "depth", "width", "in_channels", "classes", "padding",
                              "batchnorm", "block", "long_skips", "deep_supervision", "bogus")],
    *[("normalization", f) for f in ("low", "high", "p_low", "p_high")],
]


def _header(work: dict) -> dict:
    return json.loads(dict(work["members"])["model.json"])


def _with_header(work: dict, header: dict) -> bytes:
    data = json.dumps(header, allow_nan=True).encode()
    return _zip([("model.json", data)] + [m for m in work["members"] if m[0] != "model.json"])


@settings(max_examples=400, **SETTINGS)
@given(edits=st.lists(st.tuples(st.sampled_from(_FIELDS), st.one_of(_NASTY, st.just(KeyError))),
                      min_size=1, max_size=3))
def test_header_field_mutations(work, edits):
    header = _header(work)
    for field_path, value in edits:
        parent = header
        for key in field_path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if value is KeyError:
            parent.pop(field_path[-1], None)
        else:
            parent[field_path[-1]] = value
    event(_check(work, _with_header(work, header)))


@settings(max_examples=150, **SETTINGS)
@given(values=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=2, max_size=2),
       names=st.lists(st.text(max_size=5), min_size=2, max_size=2),
       meta=st.recursive(st.none() | st.integers() | st.text(max_size=4),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(
                             st.text(max_size=3), c, max_size=3), max_leaves=8))
def test_informative_fields_with_any_valid_json_still_load(work, values, names, meta):
    header = _header(work)
    header.update(class_values=values, class_names=names, metadata={"x": meta})
    assert _check(work, _with_header(work, header)) == "loaded"
    assert load_model(work["dir"] / "case.unetseg").class_values == values


@pytest.mark.parametrize("values", [[0, 2**32], [-1, 2**31], [2**40, -(2**40)]])
def test_class_values_no_label_image_can_hold_are_refused(work, values):
    """They would be wrapped when written back (4e9 as int32 was -294967296)."""
    header = _header(work)
    header.update(class_values=values)
    with pytest.raises(ModelFileError, match="does not fit a label image"):
        load_model(_write(work, _with_header(work, header)))


# ---------------------------------------------------------------------------- archive surgery

def _tensor_names(work: dict) -> list[str]:
    return [n for n, _ in work["members"] if n.startswith("tensors/")]


def _surgery(work: dict, kind: str, a: int, b: int) -> tuple[list[tuple[str, bytes]], bool]:
    """Apply one structural edit; returns the members and whether the file must still load."""
    members = list(work["members"])
    names = _tensor_names(work)
    i = 1 + a % len(names)
    j = 1 + b % len(names)
    name, data = members[i]
    arr = np.load(io.BytesIO(data))
    if kind == "rename":
        members[i] = (name.replace("tensors/", "tensors/x"), data)
    elif kind == "drop":
        del members[i]
    elif kind == "drop_json":
        del members[0]
    elif kind == "swap":  # loads when both tensors have the same shape, else refused
        other = np.load(io.BytesIO(members[j][1]))
        members[i], members[j] = (name, members[j][1]), (members[j][0], data)
        return members, other.shape == arr.shape
    elif kind == "pickle":
        payload = np.array([_Payload(work["marker"])] * max(arr.size, 1), dtype=object)
        members[i] = (name, _npy(payload.reshape(arr.shape or ()), allow_pickle=True))
    elif kind == "huge_shape":
        members[i] = (name, data.replace(str(arr.shape).encode(), b"(4000000000, 4000000000)"))
    elif kind == "extra":
        members.append(("tensors/evil.npy", _npy(np.zeros(3))))
        return members, True  # unknown extra entries are ignored
    elif kind == "float64_fortran_bigendian":
        members[i] = (name, _npy(np.array(arr, dtype=">f8", order="F")))
        return members, True
    elif kind == "dup":
        members.append((name, _npy(np.full(arr.shape, 0.5, arr.dtype))))
        return members, True  # last entry of a duplicated name wins; still a valid tensor
    return members, False


_KINDS = ["rename", "drop", "drop_json", "swap", "pickle", "huge_shape", "extra",
          "float64_fortran_bigendian", "dup"]


@settings(max_examples=120, **SETTINGS)
@given(kind=st.sampled_from(_KINDS), a=st.integers(0, 999), b=st.integers(0, 999))
def test_archive_surgery(work, kind, a, b):
    members, must_load = _surgery(work, kind, a, b)
    outcome = _check(work, _zip(members))
    event(f"{kind}: {outcome}")
    assert outcome == ("loaded" if must_load else "refused"), kind


# ---------------------------------------------------------------------------- named regressions


def test_deeply_nested_json_is_refused_not_a_recursion_error(work):
    header = _header(work)
    text = json.dumps(header)[:-1] + ', "deep": ' + "[" * 200_000 + "]" * 200_000 + "}"
    assert len(text) < 1 << 20
    members = [("model.json", text.encode())] + work["members"][1:]
    assert _check(work, _zip(members)) == "refused"


def test_huge_declared_network_is_refused_before_allocating(work):
    header = _header(work)
    header["config"].update(depth=8, width=1024)  # ~8 TB of weights in a 40 kB file
    with pytest.raises(ModelFileError, match="tensors do not match|can hold"):
        load_model(_write(work, _with_header(work, header)))


def test_huge_declared_array_shape_is_refused_before_allocating(work):
    members, _ = _surgery(work, "huge_shape", 0, 0)
    with pytest.raises(ModelFileError, match="shape"):
        load_model(_write(work, _zip(members)))


def test_object_array_pickle_payload_never_runs(work):
    for a in range(len(_tensor_names(work))):
        members, _ = _surgery(work, "pickle", a, 0)
        assert _check(work, _zip(members)) == "refused"


def test_plain_pickle_and_torch_save_files_are_refused(work):
    assert _check(work, pickle.dumps(_Payload(work["marker"]))) == "refused"
    buf = io.BytesIO()
    torch.save({"state": build_model(BASE_CFG).state_dict(), "evil": _Payload(work["marker"])},
               buf)
    assert _check(work, buf.getvalue()) == "refused"  # a ZIP too, but no model.json


def _write(work: dict, blob: bytes) -> Path:
    path = work["dir"] / "named.unetseg"
    path.write_bytes(blob)
    return path


# ---------------------------------------------------------------------------- numbers

_VALUES = st.sampled_from([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e37, -1e37, 1e39, 1e300,
                           -1.0, 0.0, 1e-45, 1e-300, 5e3])


def _predicts(saved) -> str:
    """Run the loaded model through the prediction: 'refused' (ValueError) or 'finite'; a
    NaN or infinite probability (all class 0 once argmaxed) fails."""
    from napari_unetseg.inference import InferenceConfig, predict

    image = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    try:
        res = predict(saved.model, image, normalization=saved.normalization,
                      config=InferenceConfig(tile=8, device="cpu", batch_size=2))
    except ValueError as e:
        assert "NaN or infinite" in str(e) or "overflow" in str(e), str(e)
        return "refused at prediction"
    assert np.isfinite(res.probabilities).all(), "NaN/inf probabilities returned silently"
    return "finite"


@settings(max_examples=200, **SETTINGS)
@given(which=st.integers(0, 999), where=st.floats(0, 1), value=_VALUES,
       float64=st.booleans(), count=st.integers(1, 4))
def test_extreme_numbers_in_weights_are_refused_or_predict_finite(work, which, where, value,
                                                                  float64, count):
    members = list(work["members"])
    i = 1 + which % len(_tensor_names(work))
    name, data = members[i]
    arr = np.load(io.BytesIO(data))
    if arr.dtype.kind != "f" or arr.size == 0:
        return
    arr = arr.astype(np.float64 if float64 else np.float32)
    flat = arr.reshape(-1)
    start = min(int(where * flat.size), flat.size - 1)
    with np.errstate(over="ignore"):
        flat[start : start + count] = value
    members[i] = (name, _npy(arr))
    path = _write(work, _zip(members))
    try:
        saved = load_model(path)
    except ModelFileError as e:
        assert "NaN or infinite" in str(e) or "overflow" in str(e) or "negative" in str(e)
        event("refused at load")
        return
    event(_predicts(saved))


@settings(max_examples=100, **SETTINGS)
@given(low=_VALUES, high=_VALUES)
def test_extreme_normalisation_records_are_refused_or_predict_finite(work, low, high):
    header = _header(work)
    header["normalization"].update(low=low, high=high)
    try:
        saved = load_model(_write(work, _with_header(work, header)))
    except ModelFileError:
        event("refused at load")
        return
    event(_predicts(saved))
