"""``napari-unetseg export``: write a model file as a bioimage.io model package (.zip)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._common import CliError, check_output, example, read_image


def run(args: argparse.Namespace) -> int:
    from ..bioimageio_export import export_bioimageio, require_bioimageio, run_model_test
    from ..io import load_model

    try:
        require_bioimageio()
    except ImportError as e:
        raise CliError(str(e)) from None
    out = Path(args.output)
    check_output(out, args.overwrite, tuple(p for p in (args.model, args.sample) if p))
    saved = load_model(args.model)
    sample = read_image(args.sample) if args.sample else None
    export_bioimageio(
        saved, out, name=args.name, description=args.description,
        authors=args.author or ["napari-unetseg user"], license=args.license,
        training_data=args.training_data, sample=sample, tags=args.tag or (),
        overwrite=args.overwrite,
    )
    report: dict[str, Any] = {"package": str(out)}
    if args.test:
        summary = run_model_test(out)
        report["bioimageio_test"] = summary.status
        if summary.status != "passed":
            print(json.dumps(report))
            raise CliError(f"bioimageio.core's model test failed on {out}: "
                           + " ".join(summary.format().split())[:500])
    print(json.dumps(report))
    return 0


def add_parser(sub: Any) -> None:
    from ..bioimageio_export import DEFAULT_LICENSE

    e = sub.add_parser(
        "export", help="write a model file as a bioimage.io model package (.zip)",
        epilog=example("napari-unetseg export model.unetseg -o model.zip --author "
                       "\"A. Author\" --training-data \"ISBI 2012 slices 0-24\" --test"),
        description="Write a model file as a bioimage.io model package (format 0.5): "
                    "TorchScript and PyTorch state-dict weights, test tensors, a cover and a "
                    "README. Needs the optional libraries: pip install "
                    "\"napari-unetseg[bioimageio]\".",
    )
    e.add_argument("model", help="model file (.unetseg) to export")
    e.add_argument("-o", "--output", required=True, metavar="PACKAGE.zip",
                   help="bioimage.io package to write")
    e.add_argument("--name", help="package name (default: the architecture and classes)")
    e.add_argument("--description", help="one-paragraph description (default: generated)")
    e.add_argument("--author", action="append",
                   help="author name; repeat for several (default: 'napari-unetseg user')")
    e.add_argument("--license", default=DEFAULT_LICENSE,
                   help="SPDX license of the weights; choose one the training data allows")
    e.add_argument("--training-data", default="",
                   help="what the model was trained on, its source and terms of use; "
                        "default: none (the README says 'not recorded')")
    e.add_argument("--sample", metavar="IMAGE.tif",
                   help="image for the test tensors and the cover (default: the bundled EM "
                        "sample)")
    e.add_argument("--tag", action="append",
                   help="extra tag; repeat for several (default: none)")
    e.add_argument("--test", action="store_true",
                   help="also run bioimageio.core's model test on the package")
    e.add_argument("--overwrite", action="store_true", help="replace an existing package")
    e.set_defaults(func=run)
