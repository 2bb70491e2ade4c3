"""Every failure the CLI can meet is one line, with exit code 2 (or 128 + the signal), names
the CLI flag, is found before the work starts, and leaves nothing behind: options that cannot
apply to the model or output kind, ``--slices`` ranges, ``--channel-axis``, ``gui`` options and
no display, CPU out of memory, and SIGTERM / SIGHUP (in a subprocess, as a user sends them)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unetseg import ModelConfig, Normalization, build_model, inference, training
from napari_unetseg.cli import main
from napari_unetseg.io import save_model

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--iterations", "1", "--depth", "2", "--width", "4", "--patch-size", "16",
        "--batch-size", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    save_model(d / "unet.unetseg", build_model(ModelConfig(arch="unet", depth=2, width=4)),
               normalization=Normalization())
    save_model(d / "unetpp.unetseg",
               build_model(ModelConfig(arch="unetpp", depth=2, width=4)).eval(),
               normalization=Normalization())
    img = (np.random.default_rng(0).random((3, 32, 32)) * 255).astype(np.uint8)
    lab = np.zeros((3, 32, 32), np.uint8)
    lab[..., :8], lab[..., -8:] = 1, 2
    tifffile.imwrite(d / "img.tif", img, photometric="minisblack")
    tifffile.imwrite(d / "lab.tif", lab, photometric="minisblack")
    tifffile.imwrite(d / "img2d.tif", img[0], photometric="minisblack")
    tifffile.imwrite(d / "lab2d.tif", lab[0], photometric="minisblack")
    return d


@pytest.fixture
def no_work(monkeypatch):
    """Training or segmenting fails the test: the options must be refused before."""
    monkeypatch.setattr(inference, "segment", lambda *a, **k: pytest.fail("segmented"))
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained"))


def _cli(capsys, argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _refused(capsys, argv, pattern: str) -> str:
    rc, out, err = _cli(capsys, argv)
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and "Traceback" not in err and len(lines) == 1, err
    assert pattern in lines[0], lines[0]
    assert len(lines[0]) < 500
    return lines[0]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------- option mismatches


def _p(d, model, *extra, image="img.tif"):
    return ["predict", d / model, d / image, "-o", d / "out.tif", "--device", "cpu", *extra]


MISMATCHES = [
    ("class-with-labels", lambda d: _p(d, "unet.unetseg", "--class", "1"),
     "--class applies to --output probabilities or instances, not labels"),
    ("class-out-of-range", lambda d: _p(d, "unet.unetseg", "--output", "probabilities",
                                        "--class", "5"), "--class must be in 0..1, got 5"),
    ("class-negative", lambda d: _p(d, "unet.unetseg", "--output", "instances", "--class",
                                    "-1"), "--class must be in 0..1, got -1"),
    ("level-on-unet", lambda d: _p(d, "unet.unetseg", "--level", "1"),
     "--level applies to UNet++ models; this model is a unet"),
    ("level-accurate-on-unet", lambda d: _p(d, "unet.unetseg", "--level", "accurate"),
     "--level applies to UNet++ models"),
    ("level-0", lambda d: _p(d, "unetpp.unetseg", "--level", "0"),
     "--level must be 'accurate' or 1..2, got '0'"),
    ("level-too-deep", lambda d: _p(d, "unetpp.unetseg", "--level", "3"),
     "--level must be 'accurate' or 1..2, got '3'"),
    ("level-word", lambda d: _p(d, "unetpp.unetseg", "--level", "fast"),
     "--level must be 'accurate' or 1..2, got 'fast'"),
    ("split-touching-with-labels", lambda d: _p(d, "unet.unetseg", "--split-touching"),
     "--split-touching applies to --output instances"),
    ("block-with-tiff", lambda d: _p(d, "unet.unetseg", "--block", "1,32,32"),
     "--block applies to a zarr output"),
    ("class-with-zarr", lambda d: ["predict", d / "unet.unetseg", d / "img.tif", "-o",
                                   d / "o.zarr", "--output", "probabilities", "--class", "1"],
     "--class applies to a TIFF output"),
    ("block-syntax", lambda d: ["predict", d / "unet.unetseg", d / "img.tif", "-o",
                                d / "o.zarr", "--block", "2x32x32"],
     "--block must be three integers >= 1 (Z,Y,X), got '2x32x32'"),
    ("channel-axis-out-of-range", lambda d: _p(d, "unet.unetseg", "--channel-axis", "5"),
     "--channel-axis 5 is out of range for an image of shape (3, 32, 32)"),
    ("channel-axis-on-1ch-model", lambda d: _p(d, "unet.unetseg", "--channel-axis", "0"),
     "3 channel(s)"),
    ("train-channel-axis-out-of-range",
     lambda d: ["train", d / "img.tif", d / "lab.tif", "-o", d / "m.unetseg", *TINY,
                "--channel-axis", "-4"],
     "--channel-axis -4 is out of range for an image of shape (3, 32, 32)"),
    ("resume-other-arch",
     lambda d: ["train", d / "img.tif", d / "lab.tif", "-o", d / "m.unetseg", *TINY[:2],
                "--resume", d / "unet.unetseg", "--arch", "unetpp"],
     "--arch unetpp differs from the --resume model (unet)"),
    ("resume-other-depth",
     lambda d: ["train", d / "img.tif", d / "lab.tif", "-o", d / "m.unetseg",
                "--resume", d / "unet.unetseg", "--depth", "3"],
     "--depth 3 differs from the --resume model (2)"),
    ("slices-out-of-range", lambda d: _p(d, "unet.unetseg", "--slices", "3"),
     "--slices 3 is out of range for a stack of 3 slices"),
    ("slices-range-out-of-range", lambda d: _p(d, "unet.unetseg", "--slices", "0:9"),
     "--slices 0:9 is out of range for a stack of 3 slices"),
    ("slices-reversed", lambda d: _p(d, "unet.unetseg", "--slices", "2:1"),
     "--slices 2:1 is a reversed range (did you mean 1:2?)"),
    ("slices-empty", lambda d: _p(d, "unet.unetseg", "--slices", "1:1"),
     "--slices 1:1 selects no slice"),
    ("slices-step-0", lambda d: _p(d, "unet.unetseg", "--slices", "0:2:0"),
     "--slices step must not be 0"),
    ("slices-2d-predict", lambda d: _p(d, "unet.unetseg", "--slices", "0", image="img2d.tif"),
     "--slices needs a stack (Z, Y, X)"),
    ("evaluate-slices-2d",
     lambda d: ["evaluate", d / "lab2d.tif", d / "lab2d.tif", "--slices", "0:1"],
     "--slices needs a stack (Z, Y, X); these images are 2-D"),
    ("evaluate-slices-out-of-range",
     lambda d: ["evaluate", d / "lab.tif", d / "lab.tif", "--slices", "-4"],
     "--slices -4 is out of range for a stack of 3 slices"),
]


@pytest.mark.parametrize(("argv", "pattern"), [pytest.param(*c[1:], id=c[0])
                                               for c in MISMATCHES])
def test_options_that_cannot_apply_are_refused_before_the_work(d, capsys, no_work, argv,
                                                               pattern):
    before = _listing(d)
    _refused(capsys, argv(d), pattern)
    assert _listing(d) == before


@pytest.mark.parametrize(("text", "expected"), [("-1", [2]), ("-2:", [1, 2]), (":-1", [0, 1]),
                                                ("::-1", [2, 1, 0]), ("0:3:2", [0, 2]),
                                                ("1", [1]), ("-3", [0])])
def test_slices_are_python_like(d, capsys, text, expected):
    out = d / f"s{expected}.tif"
    rc, _, err = _cli(capsys, ["predict", d / "unet.unetseg", d / "img.tif", "-o", out,
                               "--output", "probabilities", "--class", "1", "--device", "cpu",
                               "--tile", "32", "--slices", text])
    assert rc == 0, err
    whole = d / "whole.tif"
    if not whole.exists():
        assert _cli(capsys, ["predict", d / "unet.unetseg", d / "img.tif", "-o", whole,
                             "--output", "probabilities", "--class", "1", "--device", "cpu",
                             "--tile", "32"])[0] == 0
    np.testing.assert_allclose(tifffile.imread(out),
                               tifffile.imread(whole)[expected], atol=1e-6)
    out.unlink()


def test_evaluate_with_slices_on_a_stack_still_works(d, capsys):
    rc, out, err = _cli(capsys, ["evaluate", d / "lab.tif", d / "lab.tif", "--slices", "-2:"])
    assert rc == 0, err
    assert json.loads(out)["pixel_error"] == 0.0


# ---------------------------------------------------------------------------- gui


def test_gui_refuses_unknown_widgets_before_starting_napari(capsys, monkeypatch):
    from napari_unetseg._widgets import launch

    monkeypatch.setattr(launch, "main", lambda **k: pytest.fail("napari started"))
    line = _refused(capsys, ["gui", "--widgets", "Train,Segmnet"],
                    "--widgets: unknown widget 'Segmnet'")
    assert "Train, Segment, Weight map preview, UNet++ levels" in line


def test_gui_widget_names_are_the_manifest_s():
    yaml = pytest.importorskip("yaml")
    from napari_unetseg._widgets.launch import WIDGETS

    manifest = yaml.safe_load((SRC / "napari_unetseg" / "napari.yaml").read_text())
    assert list(WIDGETS) == [w["display_name"] for w in manifest["contributions"]["widgets"]]


def test_gui_without_a_display_is_one_line(capsys, monkeypatch):
    from napari_unetseg._widgets import launch

    monkeypatch.setattr(launch, "main", lambda **k: pytest.fail("napari started"))
    monkeypatch.setattr(sys, "platform", "linux")
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    _refused(capsys, ["gui"], "no display")
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # headless Qt is a choice: allowed
    started = []
    monkeypatch.setattr(launch, "main", lambda **k: started.append(k))
    assert main(["gui", "--no-sample"]) == 0 and started


# ---------------------------------------------------------------------------- out of memory


CPU_OOM = ("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 "
           "bytes. Error code 12 (Cannot allocate memory)")


def test_cpu_out_of_memory_is_one_line(d, capsys, monkeypatch):
    def oom(*a, **k):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(inference, "segment", oom)
    line = _refused(capsys, _p(d, "unet.unetseg"), "error: out of memory (DefaultCPUAllocator")
    assert "--tile" in line and not (d / "out.tif").exists()
    monkeypatch.setattr(training, "_step", oom)
    _refused(capsys, ["train", d / "img.tif", d / "lab.tif", "-o", d / "m.unetseg", *TINY],
             "out of memory")
    assert not (d / "m.unetseg").exists()


def test_other_runtime_errors_are_not_hidden(d, monkeypatch):
    def bug(*a, **k):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(inference, "segment", bug)
    with pytest.raises(RuntimeError, match="an internal bug"):
        main([str(a) for a in _p(d, "unet.unetseg")])


# ---------------------------------------------------------------------------- wording


def test_errors_name_cli_flags_not_api_arguments(d, capsys, tmp_path):
    pytest.importorskip("zarr")
    out = tmp_path / "o.zarr"
    base = ["predict", d / "unet.unetseg", d / "img.tif", "-o", out, "--device", "cpu",
            "--tile", "32"]
    assert _cli(capsys, [*base, "--block", "1,32,32"])[0] == 0
    line = _refused(capsys, [*base, "--block", "1,16,16"], "leave out --block to continue it")
    assert "block=None" not in line
    line = _refused(capsys, [*base, "--tta"], "pass --overwrite to redo every block")
    assert "resume=False" not in line
    target = tmp_path / "exists.tif"
    target.write_bytes(b"x")
    line = _refused(capsys, ["predict", d / "unet.unetseg", d / "img.tif", "-o", target],
                    "already exists; pass --overwrite to replace it")


def test_a_model_file_quoting_100_kb_gives_a_short_line(d, capsys, tmp_path):
    with zipfile.ZipFile(d / "unet.unetseg") as zf:
        members = [(n, zf.read(n)) for n in zf.namelist()]
    header = json.loads(members[0][1])
    header["config"]["arch"] = "x" * 100_000
    bad = tmp_path / "long.unetseg"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("model.json", json.dumps(header))
        for n, data in members[1:]:
            zf.writestr(n, data)
    _refused(capsys, ["predict", bad, d / "img.tif", "-o", tmp_path / "o.tif"], "long.unetseg")


# ---------------------------------------------------------------------------- signals


def _save_then(signum: int):
    """A writestr that delivers ``signum`` to this process on the third tensor."""
    real, calls = zipfile.ZipFile.writestr, []

    def writestr(self, name, *a, **k):
        calls.append(name)
        if len(calls) == 3:
            os.kill(os.getpid(), signum)
        return real(self, name, *a, **k)

    return writestr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_saving_leaves_the_old_file_and_no_temporary(d, tmp_path, capsys,
                                                                    monkeypatch, signum):
    target = tmp_path / "m.unetseg"
    target.write_bytes((d / "unet.unetseg").read_bytes())
    before = target.read_bytes()
    monkeypatch.setattr(zipfile.ZipFile, "writestr", _save_then(signum))
    rc, out, err = _cli(capsys, ["train", d / "img.tif", d / "lab.tif", "-o", target, *TINY,
                                 "--overwrite"])
    name = signal.Signals(signum).name
    assert rc == 128 + signum and out == ""
    assert err.strip().splitlines()[-1] == (f"napari-unetseg train: interrupted ({name}); no "
                                            "model written")
    assert target.read_bytes() == before and _listing(tmp_path) == ["m.unetseg"]
    assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler,
                                        signal.SIG_IGN) or callable(signal.getsignal(signum))


def _spawn(args: list, cwd: Path) -> subprocess.Popen:
    """The CLI as a terminal starts it. A shell starts a background job with SIGINT ignored,
    and its children inherit that; the CLI, like Python, leaves an ignored SIGINT ignored. A
    signal this process catches is the default in the child, so catch SIGINT while spawning."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "napari_unetseg.cli", *map(str, args)],
                                cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait_for(proc: subprocess.Popen, prefix: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if line.startswith(prefix):
            return
        if not line and proc.poll() is not None:
            break
    pytest.fail(f"never printed {prefix!r}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signals_stop_a_training_run_without_leaving_files(d, tmp_path, signum):
    """As a user (or a batch system, or a closed terminal) sends them to a real process."""
    out = tmp_path / "m.unetseg"
    proc = _spawn(["train", d / "img.tif", d / "lab.tif", "-o", out, "--iterations", "1000000",
                   "--depth", "2", "--width", "4", "--patch-size", "16", "--batch-size", "1",
                   "--device", "cpu"], tmp_path)
    try:
        _wait_for(proc, "train [")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1] == (f"napari-unetseg train: interrupted ({name}); no "
                                            "model written")
    assert "Traceback" not in err and _listing(tmp_path) == []


@pytest.mark.parametrize(("argv", "pattern"), [
    (["train", "{d}/img.tif", "{d}/lab.tif", "-o", "{d}/m.unetseg", "--iterations", "0"],
     "--iterations must be in [1, 10000000], got 0"),
    (["train", "{d}/img.tif", "{d}/lab.tif", "-o", "{d}/m.unetseg", "--batch-size", "0"],
     "--batch-size must be in"),
    (["train", "{d}/img.tif", "{d}/lab.tif", "-o", "{d}/m.unetseg", "--depth", "99"],
     "depth must be"),
    (["train", "{d}/img.tif", "{d}/lab.tif", "-o", "{d}/m.unetseg", "--lr", "nan"],
     "--lr must be in"),
    (["predict", "{d}/unet.unetseg", "{d}/img.tif", "-o", "{d}/o.tif", "--tile", "4"],
     "--tile must be 'auto' or an int >= 8"),
    (["predict", "{d}/unet.unetseg", "{d}/img.tif", "-o", "{d}/o.tif", "--overlap", "2"],
     "--overlap must be 'auto' or a fraction in [0, 1)"),
    (["predict", "{d}/unetpp.unetseg", "{d}/img.tif", "-o", "{d}/o.tif", "--level", "9"],
     "--level must be 'accurate' or 1..2"),
    (["predict", "{d}/unet.unetseg", "{d}/img.tif", "-o", "{d}/o.tif", "--output",
      "probabilities", "--class", "7"], "--class must be in 0..1, got 7"),
])
def test_options_are_checked_before_any_image_is_read(d, capsys, monkeypatch, argv, pattern):
    from napari_unetseg.cli import predict as cli_predict
    from napari_unetseg.cli import train as cli_train

    for module in (cli_predict, cli_train):
        monkeypatch.setattr(module, "read_image", lambda p: pytest.fail(f"read {p}"))
    _refused(capsys, [a.format(d=d) for a in argv], pattern)


def test_sigterm_during_a_zarr_prediction_keeps_whole_blocks_and_resumes(d, tmp_path, capsys,
                                                                         monkeypatch):
    """The block being written when SIGTERM comes is not marked done: the rerun redoes it and
    the output equals an uninterrupted run."""
    zarr = pytest.importorskip("zarr")
    from napari_unetseg import blockwise

    out, ref = tmp_path / "o.zarr", tmp_path / "ref.zarr"
    base = ["predict", d / "unet.unetseg", d / "img.tif", "--device", "cpu", "--tile", "32",
            "--block", "1,32,32"]
    assert _cli(capsys, [*base[:3], "-o", ref, *base[3:]])[0] == 0
    real, calls = blockwise._write, []

    def write(group, idx, bounds, labels, probs):
        calls.append(idx)
        if len(calls) == 2:  # half-way through the second block
            group["labels"][bounds[0][0]:bounds[0][1]] = 99
            os.kill(os.getpid(), signal.SIGTERM)
        return real(group, idx, bounds, labels, probs)

    monkeypatch.setattr(blockwise, "_write", write)
    rc, stdout, err = _cli(capsys, [*base[:3], "-o", out, *base[3:]])
    assert rc == 143 and stdout == ""
    assert err.strip().splitlines()[-1] == ("napari-unetseg predict: interrupted (SIGTERM); 1 "
                                            "new block(s) written; run the same command again "
                                            "to resume")
    assert zarr.open_group(str(out))["done"][...].sum() == 1
    monkeypatch.setattr(blockwise, "_write", real)
    rc, stdout, _ = _cli(capsys, [*base[:3], "-o", out, *base[3:]])
    assert rc == 0 and json.loads(stdout)["computed"] == 2
    np.testing.assert_array_equal(zarr.open_group(str(out))["labels"][...],
                                  zarr.open_group(str(ref))["labels"][...])


def test_slices_cut_the_z_axis_not_the_channel_axis(d, tmp_path, capsys):
    """(C, Z, Y, X) with --channel-axis 0: --slices selects along Z."""
    img = tifffile.imread(d / "img.tif")[None]  # one channel first
    tifffile.imwrite(tmp_path / "czyx.tif", img, photometric="minisblack")
    out = tmp_path / "o.tif"
    rc, stdout, err = _cli(capsys, ["predict", d / "unet.unetseg", tmp_path / "czyx.tif", "-o",
                                    out, "--channel-axis", "0", "--slices", "-2:", "--device",
                                    "cpu", "--tile", "32"])
    assert rc == 0, err
    assert json.loads(stdout)["shape"] == [2, 32, 32]
