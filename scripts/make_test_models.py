#!/usr/bin/env python3
"""Write the project's TEST models (tiny ONNX files with the real models' I/O contracts, not real
models) to OUT_DIR and list "name<TAB>path" lines on stdout.

    python scripts/make_test_models.py out/test_models
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's packages without installing them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.testmodels import write_test_models  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path, help="folder to write test_<name>.onnx files into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = write_test_models(args.out_dir)
    sys.stdout.write("".join(f"{name}\t{path}\n" for name, path in paths.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
