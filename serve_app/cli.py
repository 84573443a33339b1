"""``faceswap-serve``: the service's own commands.

- ``demo``: the main job on the embedded default: starts a local Ray (CPU, one logical GPU), deploys
  the swap graph, swaps a face through the real HTTP API and writes the result.
- ``batch``: the Ray Data offline video job (see ``serve_app.batch``).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from pipeline.errors import FaceSwapError, InvalidInputError
from pipeline.profiles import PROFILES, shared_assets_models_dir
from serve_app.local import local_serve

log = logging.getLogger("faceswap-serve")

DEMO_SOURCE = "astronaut_eileen_collins_nasa.png"
DEMO_TARGET = "pexels_group_meeting_1080865.jpeg"


def _multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, path in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _demo_inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    images = shared_assets_models_dir().parent / "images"
    source = Path(args.source) if args.source else images / DEMO_SOURCE
    target = Path(args.target) if args.target else images / DEMO_TARGET
    for path in (source, target):
        if not path.is_file():
            raise InvalidInputError(
                f"{path} not found: pass --source and --target images, or set FACESWAP_SHARED_ASSETS "
                "to the folder holding the test photos"
            )
    return source, target


def _cmd_demo(args: argparse.Namespace) -> int:
    from ray import serve

    from serve_app.app import build_app

    source, target = _demo_inputs(args)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    with local_serve(num_cpus=max(4, os.cpu_count() or 1)) as url:
        app_args = {"profile": args.profile, "providers": ["cpu"], "enhance": args.enhance}
        serve.run(build_app(app_args), name="faceswap", route_prefix="/")
        body, content_type = _multipart(
            {"enhance_output": "true" if args.enhance else "false", "face_selector_mode": "many"},
            {"source_image": source, "target_image": target},
        )
        request = urllib.request.Request(
            f"{url}/api/v1/swap",
            data=body,
            headers={"Content-Type": content_type, "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            sys.stderr.write(
                f"faceswap-serve: swap failed: HTTP {exc.code} {exc.read().decode(errors='replace')}\n"
            )
            return 1
        image = base64.b64decode(payload["result_image"].split(",", 1)[1])
        result = out_dir / "demo_swapped.jpg"
        result.write_bytes(image)
        summary = {
            "output": str(result),
            "source": str(source),
            "target": str(target),
            "faces_swapped": payload.get("faces_swapped"),
            "components": payload.get("components"),
            "request_id": payload.get("request_id"),
            "served_at": f"{url}/api/v1/swap",
        }
        (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        sys.stdout.write(json.dumps(summary) + "\n")
        return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from serve_app.batch import main as batch_main

    return int(batch_main(args.batch_args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceswap-serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="local Ray + Serve: swap two photos through the HTTP API")
    demo.add_argument("-o", "--output", default="out", help="folder for the result (default out/)")
    demo.add_argument("--source", help=f"source face image (default: shared assets {DEMO_SOURCE})")
    demo.add_argument("--target", help=f"target image (default: shared assets {DEMO_TARGET})")
    demo.add_argument("--profile", default="auto", choices=PROFILES)
    demo.add_argument("--enhance", action="store_true", help="also run the face enhancer")
    demo.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    demo.set_defaults(func=_cmd_demo)
    batch = sub.add_parser(
        "batch", help="Ray Data video job (arguments as python -m serve_app.batch)", add_help=False
    )
    batch.add_argument("batch_args", nargs=argparse.REMAINDER)
    batch.set_defaults(func=_cmd_batch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except FaceSwapError as error:
        sys.stderr.write(f"faceswap-serve: error: {error.message}\n")
        return 2 if 400 <= error.status < 500 else 1


if __name__ == "__main__":
    sys.exit(main())
