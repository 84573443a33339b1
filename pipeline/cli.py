"""``faceswap``: image swaps and model management from the command line (no Ray).

Exit codes: 0 ok, 2 bad input or options, 3 no face found, 4 model missing, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from types import MappingProxyType

from pipeline.catalogue import Catalogue, default_models_dir, resolve_model_file
from pipeline.download import TextProgress, download_model
from pipeline.errors import FaceSwapError, InvalidInputError, ModelNotFoundError, NoFaceError
from pipeline.imageio import encode_image, read_image_file
from pipeline.options import SwapOptions
from pipeline.profiles import PROFILES, PipelineConfig, build_pipeline
from pipeline.provenance import label_output
from pipeline.sessions import SessionConfig

log = logging.getLogger("faceswap")

_OUTPUT_TYPES = MappingProxyType({".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"})


def exit_code(error: FaceSwapError) -> int:
    """The command-line exit status of a typed error: 3 no face, 4 model missing, 2 other 4xx, else 1."""
    if isinstance(error, NoFaceError):
        return 3
    if isinstance(error, ModelNotFoundError):
        return 4
    return 2 if 400 <= error.status < 500 else 1


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    providers = tuple(p for p in args.providers.split(",") if p)
    return PipelineConfig(
        profile=args.profile,
        models_dir=args.models_dir,
        download=args.download,
        session=SessionConfig(providers=providers, strict=args.strict_providers),
        enhance=args.enhance,
    )


def add_swap_arguments(parser: argparse.ArgumentParser) -> None:
    """The swap options and model choice, shared by ``faceswap swap`` and the batch job's command."""
    parser.add_argument("--enhance", action="store_true", help="run the face enhancer after the swap")
    parser.add_argument("--blend-ratio", type=float, default=1.0, help="swapped-face weight, 0-1 (default 1)")
    parser.add_argument("--face-mask-blur", type=float, default=0.3, help="mask edge blur, 0-1 (default 0.3)")
    parser.add_argument("--face-selector", default="one", choices=["one", "many", "reference"])
    parser.add_argument("--reference", help="image of the target person to swap (face-selector reference)")
    parser.add_argument("--reference-distance", type=float, default=0.6, help="max cosine distance, 0-2")
    parser.add_argument("--detector-score", type=float, default=0.5, help="minimum detection score, 0-1")
    parser.add_argument("--enhancer-blend", type=int, default=80, help="enhanced-face weight, 0-100")
    parser.add_argument("--profile", default="auto", choices=PROFILES, help="model profile (default auto)")
    parser.add_argument("--models-dir", type=Path, help="directory with model files (air-gapped use)")
    parser.add_argument("--download", action="store_true", help="download missing catalogue models")


def swap_options_from_args(args: argparse.Namespace) -> SwapOptions:
    """SwapOptions from the arguments :func:`add_swap_arguments` added (validated)."""
    return SwapOptions.from_mapping(
        {
            "blend_ratio": args.blend_ratio,
            "face_mask_blur": args.face_mask_blur,
            "face_selector_mode": args.face_selector,
            "reference_face_distance": args.reference_distance,
            "detector_score": args.detector_score,
            "face_enhancer_blend": args.enhancer_blend,
        }
    ).with_enhance(args.enhance)


def _cmd_swap(args: argparse.Namespace) -> int:
    options = swap_options_from_args(args)
    source = read_image_file(args.source)
    target = read_image_file(args.target)
    reference = read_image_file(args.reference) if args.reference else None
    pipeline = build_pipeline(_pipeline_config(args))
    result = pipeline.swap(source, target, options, reference)
    out = Path(args.output)
    media_type = _OUTPUT_TYPES.get(out.suffix.lower())
    if media_type is None:
        raise InvalidInputError(f"output {out}: use a .jpg, .jpeg or .png file name")
    data = encode_image(result.image, media_type)
    if args.provenance:
        data = label_output(data, media_type, result.components)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        out.write_bytes(data)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {out}: {exc.strerror}") from None
    summary = {"output": str(out), "faces_swapped": result.faces_swapped, **result.components}
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    catalogue = Catalogue.load()
    dirs = [args.models_dir or default_models_dir()]
    for spec in catalogue.specs:
        path = resolve_model_file(spec, dirs)
        state = "present" if path else "missing"
        sys.stdout.write(f"{spec.name:22} {spec.kind:9} {state:8} {spec.file:40} {spec.licence}\n")
    return 0


def _cmd_models_download(args: argparse.Namespace) -> int:
    catalogue = Catalogue.load()
    models_dir = args.models_dir or default_models_dir()
    for name in args.names:
        path = download_model(
            catalogue.get(name), models_dir, allow_unverified=args.allow_unverified, progress=TextProgress()
        )
        sys.stdout.write(f"{name}: {path}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceswap", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log model and provider details")
    sub = parser.add_subparsers(dest="command", required=True)

    swap = sub.add_parser("swap", help="swap the face of SOURCE onto the face(s) in TARGET")
    swap.add_argument("source")
    swap.add_argument("target")
    swap.add_argument("-o", "--output", required=True, help="output image (.jpg or .png)")
    swap.add_argument(
        "--no-provenance",
        dest="provenance",
        action="store_false",
        help="do not label the output as synthetic (XMP DigitalSourceType + JSON label)",
    )
    add_swap_arguments(swap)
    swap.add_argument("--providers", default="cpu", help="ONNX Runtime providers, e.g. cuda,cpu")
    swap.add_argument(
        "--strict-providers", action="store_true", help="fail if the first provider is inactive"
    )
    swap.set_defaults(func=_cmd_swap)

    models = sub.add_parser("models", help="list or download catalogue models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="catalogue entries and whether their files are present")
    listing.add_argument("--models-dir", type=Path)
    listing.set_defaults(func=_cmd_models_list)
    fetch = models_sub.add_parser("download", help="download models by catalogue name")
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--models-dir", type=Path)
    fetch.add_argument("--allow-unverified", action="store_true", help="accept entries without a sha256")
    fetch.set_defaults(func=_cmd_models_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except FaceSwapError as error:
        sys.stderr.write(f"faceswap: error: {error.message}\n")
        return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
