"""Fuzzing ``io.read_tif``: every mutated TIFF reads (as an array of at most the declared size)
or raises ValueError naming the file; never a zlib, struct, index or memory error, never a
tifffile message leaking to the log, never more memory than the limit allows.

Mutations start from real stacks (uncompressed, zlib, ImageJ, tifffile-shaped): byte flips,
truncations, insertions, deletions and duplicated chunks. Derandomized: CI replays the same
examples.
"""

from __future__ import annotations

import logging
import signal

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from napari_unetseg import tiff
from napari_unetseg.io import read_tif

SETTINGS = {"deadline": None, "derandomize": True, "database": None,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture]}
LIMIT = 1 << 20  # the fuzzed files may declare anything: read at most 1 MB


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> list[bytes]:
    d = tmp_path_factory.mktemp("tiffs")
    a = (np.random.default_rng(0).random((3, 24, 20)) * 255).astype(np.uint8)
    out = []
    for i, kw in enumerate([{"photometric": "minisblack"},
                            {"photometric": "minisblack", "compression": "zlib"},
                            {"imagej": True},
                            {"photometric": "minisblack", "metadata": None,
                             "compression": "zlib", "tile": (16, 16)}]):
        tifffile.imwrite(d / f"{i}.tif", a if i != 3 else a.astype(np.uint16), **kw)
        out.append((d / f"{i}.tif").read_bytes())
    return out


@pytest.fixture
def case(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(tiff, "MAX_IMAGE_BYTES", LIMIT)

    def timeout(*a):
        raise TimeoutError("read_tif hung")

    old = signal.signal(signal.SIGALRM, timeout)
    yield tmp_path / "case.tif"
    signal.signal(signal.SIGALRM, old)


_OP = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]),
                st.floats(0, 1), st.integers(0, 255), st.integers(1, 64))


def _mutate(blob: bytes, ops) -> bytes:
    b = bytearray(blob)
    for kind, where, byte, n in ops:
        if not b:
            break
        i = min(int(where * len(b)), len(b) - 1)
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
        else:
            b[i:i] = b[i : i + n]
    return bytes(b)


@settings(max_examples=600, **SETTINGS)
@given(base=st.integers(0, 3), ops=st.lists(_OP, min_size=1, max_size=4))
def test_mutated_tiffs_read_or_raise_one_valueerror(bases, case, caplog, base, ops):
    case.write_bytes(_mutate(bases[base], ops))
    caplog.clear()
    signal.alarm(30)
    try:
        data = read_tif(case)
    except ValueError as e:
        assert str(case) in str(e) and "\n" not in str(e)
        event("refused")
    else:
        assert isinstance(data, np.ndarray) and data.nbytes <= LIMIT
        event("read")
    finally:
        signal.alarm(0)
    leaked = [r for r in caplog.records if r.name == "tifffile" and r.levelno >= logging.ERROR]
    assert not leaked, leaked[0].getMessage()
