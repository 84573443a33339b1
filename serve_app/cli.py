"""``faceswap-serve``: the service's own commands.

- ``demo``: the main job on the embedded default: starts a local Ray (CPU), deploys the swap graph,
  swaps the bundled sample photos (or yours) through the real HTTP API and writes the result.
- ``batch``: the Ray Data offline video job (see ``serve_app.batch``).

Exit codes: 0 ok, 2 bad input or options, 3 no face found, 4 model missing, 1 anything else.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from pipeline.bundled import bundled_image
from pipeline.cli import EXIT_CODES, configure_logging, exit_code, verbosity_parser
from pipeline.errors import FaceSwapError, InvalidInputError
from pipeline.profiles import PROFILES
from pipeline.provenance import package_version
from serve_app.batch.cli import add_batch_arguments, run_batch
from serve_app.local import local_serve
from serve_app.routes import SWAP_PATH

log = logging.getLogger("faceswap-serve")

DEMO_SOURCE = "astronaut_eileen_collins_nasa.png"
DEMO_TARGET = "codait_luciano_cc0.png"
DEMO_TIMEOUT_S = 300.0


def _demo_inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    source = Path(args.source) if args.source else bundled_image(DEMO_SOURCE)
    target = Path(args.target) if args.target else bundled_image(DEMO_TARGET)
    for path in (source, target):
        if not path.is_file():
            raise InvalidInputError(f"{path} not found")
    return source, target


def _say(text: str) -> None:
    sys.stderr.write(f"faceswap-serve: {text}\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    from ray import serve

    from serve_app.app import build_app

    source, target = _demo_inputs(args)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    _say("starting a local Ray and deploying the swap graph (about half a minute on 2 cores) ...")
    with local_serve(num_cpus=None, num_gpus=0, port=args.port) as url:
        app_args = {
            "profile": args.profile,
            "providers": ["cpu"],
            "enhance": args.enhance,
            "use_shared_assets": args.shared_assets,
            "spin": False,
        }
        app_args.update({stage: {"num_cpus": 0} for stage in ("ingress", "detector", "embedder", "swapper")})
        if args.enhance:
            app_args["enhancer"] = {"num_cpus": 0}
        serve.run(build_app(app_args), name="faceswap", route_prefix="/")
        _say(f"swapping {source.name} onto {target.name} through {url}{SWAP_PATH} ...")
        files = {
            name: (path.name, path.read_bytes())
            for name, path in (("source_image", source), ("target_image", target))
        }
        fields = {"enhance_output": "true" if args.enhance else "false", "face_selector_mode": "many"}
        response = httpx.post(f"{url}{SWAP_PATH}", files=files, data=fields, timeout=DEMO_TIMEOUT_S)
        body = response.json()
        if response.status_code != 200:
            _say(f"swap failed: HTTP {response.status_code} {body.get('code')}: {body.get('error')}")
            return 1
        result = out_dir / "demo_swapped.jpg"
        result.write_bytes(base64.b64decode(body["result_image"].split(",", 1)[1]))
        summary = {
            "output": str(result),
            "source": str(source),
            "target": str(target),
            "message": body["message"],
            "faces_swapped": body["faces_swapped"],
            "components": body["components"],
            "request_id": body["request_id"],
            "served_at": f"{url}{SWAP_PATH}",
        }
        (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        sys.stdout.write(json.dumps(summary) + "\n")
        return 0


def build_parser() -> argparse.ArgumentParser:
    verbose = verbosity_parser()
    parser = argparse.ArgumentParser(
        prog="faceswap-serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[verbose],
    )
    parser.add_argument("--version", action="version", version=f"faceswap-serve {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        parents=[verbose],
        help="local Ray + Serve: swap two photos through the HTTP API",
        description="Start a local Ray (CPU), deploy the swap graph, swap SOURCE's face onto every face of "
        "TARGET through POST /api/v1/swap and write OUTPUT/demo_swapped.jpg and demo_summary.json. Without "
        "--source/--target it uses the two sample photos shipped with the package.",
        epilog=EXIT_CODES,
    )
    demo.add_argument("-o", "--output", default="out", help="folder for the result (default out/)")
    demo.add_argument("--source", help=f"source face image (default: the bundled {DEMO_SOURCE})")
    demo.add_argument("--target", help=f"target image (default: the bundled {DEMO_TARGET})")
    demo.add_argument("--profile", default="auto", choices=PROFILES, help="model profile (default auto)")
    demo.add_argument("--enhance", action="store_true", help="also run the face enhancer")
    demo.add_argument(
        "--port", type=int, default=0, help="HTTP port of the local service (default: a free one)"
    )
    demo.add_argument(
        "--shared-assets", action="store_true", help="also use the models of the project's shared test assets"
    )
    demo.set_defaults(func=_cmd_demo)
    batch = sub.add_parser(
        "batch",
        parents=[verbose],
        help="Ray Data video job: swap a face into every frame of videos",
        description="Swap the face of SOURCE into every frame of each TARGET video (or folder of frames) "
        "with Ray Data; the same as `python -m serve_app.batch`.",
        epilog=EXIT_CODES,
    )
    add_batch_arguments(batch)
    batch.set_defaults(func=run_batch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    try:
        return int(args.func(args))
    except FaceSwapError as error:
        sys.stderr.write(f"faceswap-serve: error: {error.message}\n")
        return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
