"""``faceswap``: image swaps and model management from the command line (no Ray).

Exit codes: 0 ok, 2 bad input or options, 3 no face found, 4 model missing, 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

from pipeline.catalogue import Catalogue, resolve_model_file
from pipeline.download import download_model
from pipeline.errors import FaceSwapError, InvalidInputError, ModelNotFoundError, NoFaceError
from pipeline.options import OptionFact, SwapOptions, option_facts
from pipeline.orchestration import SwapOrchestrator
from pipeline.profiles import PROFILES, PipelineConfig, build_models
from pipeline.progress import Progress
from pipeline.provenance import package_version
from pipeline.sessions import PROVIDERS, SessionConfig

log = logging.getLogger("faceswap")

EXIT_CODES = "exit codes: 0 ok, 2 bad input or options, 3 no face found, 4 model missing, 1 anything else"
_OUTPUT_TYPES = MappingProxyType({".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"})


def exit_code(error: FaceSwapError) -> int:
    """The command-line exit status of a typed error: 3 no face, 4 model missing, 2 other 4xx, else 1."""
    if isinstance(error, NoFaceError):
        return 3
    if isinstance(error, ModelNotFoundError):
        return 4
    return 2 if 400 <= error.status < 500 else 1


def verbosity_parser() -> argparse.ArgumentParser:
    """``-v/--verbose``, accepted before and after a subcommand (add it as a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log model and provider details",
    )
    return parent


def configure_logging(args: argparse.Namespace) -> None:
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


def _flag(fact: OptionFact) -> str:
    return "--" + fact.name.replace("_", "-")


def _help(fact: OptionFact) -> str:
    parts = [fact.description.rstrip(".")]
    if fact.minimum is not None and fact.maximum is not None:
        parts.append(f"{fact.minimum:g} to {fact.maximum:g}")
    if fact.choices and fact.kind == "list":
        parts.append("comma-separated: " + ", ".join(fact.choices))
    if isinstance(fact.default, tuple):
        parts.append("default " + ",".join(str(v) for v in fact.default))
    elif fact.default is not None and fact.kind != "boolean":
        parts.append(f"default {fact.default}")
    return "; ".join(parts)


def add_swap_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per swap option (derived from :class:`SwapOptions`) plus the model choice; shared by
    ``faceswap swap`` and the batch job's command."""
    options = parser.add_argument_group("swap options (the same names as the HTTP API's fields)")
    for fact in option_facts():
        if fact.kind == "boolean":
            options.add_argument(
                _flag(fact),
                dest=f"option_{fact.name}",
                action=argparse.BooleanOptionalAction,
                help=f"{_help(fact)}; default {'on' if fact.default else 'off'}",
            )
            continue
        choices = fact.choices if fact.kind == "string" and fact.choices else None
        options.add_argument(
            _flag(fact),
            dest=f"option_{fact.name}",
            choices=choices,
            metavar=None if choices else fact.kind.upper(),
            help=_help(fact),
        )
    options.add_argument("--enhance", action="store_true", help="add face_enhancer to the frame processors")
    options.add_argument(
        "--reference", help="image of the target person to swap (face-selector-mode reference)"
    )
    models = parser.add_argument_group("models")
    models.add_argument("--profile", default="auto", choices=PROFILES, help="model profile (default auto)")
    models.add_argument("--models-dir", type=Path, help="folder with model files (air-gapped use)")
    models.add_argument("--download", action="store_true", help="download missing catalogue models")
    models.add_argument(
        "--shared-assets", action="store_true", help="also search the project's shared test assets for models"
    )


def swap_options_from_args(args: argparse.Namespace) -> SwapOptions:
    """SwapOptions from the flags :func:`add_swap_arguments` added (validated; InvalidOptionError)."""
    values = {fact.name: getattr(args, f"option_{fact.name}") for fact in option_facts()}
    options = SwapOptions.from_mapping({k: v for k, v in values.items() if v is not None})
    return options.with_enhance(True) if args.enhance else options


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    providers = tuple(p for p in args.providers.split(",") if p)
    return PipelineConfig(
        profile=args.profile,
        models_dir=args.models_dir,
        download=args.download,
        use_shared_assets=args.shared_assets,
        session=SessionConfig(providers=providers, strict=args.strict_providers),
        enhance=args.enhance or "face_enhancer" in (args.option_frame_processors or ""),
    )


def _output_path(raw: str) -> tuple[Path, str]:
    out = Path(raw)
    media_type = _OUTPUT_TYPES.get(out.suffix.lower())
    if media_type is None:
        raise InvalidInputError(f"output {out}: use a .jpg, .jpeg or .png file name")
    if not out.parent.is_dir():
        raise InvalidInputError(f"output {out}: the folder {out.parent} does not exist")
    return out, media_type


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read the {what} image {path}: {exc.strerror}") from None


def _cmd_swap(args: argparse.Namespace) -> int:
    options = swap_options_from_args(args)
    out, media_type = _output_path(args.output)
    uploads = {"source_image": _read(args.source, "source"), "target_image": _read(args.target, "target")}
    if args.reference:
        uploads["reference_image"] = _read(args.reference, "reference")
    if not options.swap:
        del uploads["source_image"]
    orchestrator = SwapOrchestrator(build_models(_pipeline_config(args)).ports())
    encoded = asyncio.run(
        orchestrator.swap_encoded(
            uploads, options, media_type=media_type, label={} if args.provenance else None
        )
    )
    try:
        out.write_bytes(encoded.data)
    except OSError as exc:
        raise InvalidInputError(f"cannot write {out}: {exc.strerror}") from None
    result = encoded.result
    summary = {
        "output": str(out),
        "faces_processed": result.faces_swapped,
        "faces_swapped": result.faces_swapped if options.swap else 0,
        "frame_processors": list(options.frame_processors),
        **result.components,
        "notices": list(result.notices),
    }
    for notice in result.notices:
        sys.stderr.write(f"faceswap: note: {notice}\n")
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    catalogue = Catalogue.load()
    config = PipelineConfig(models_dir=args.models_dir, use_shared_assets=args.shared_assets)
    dirs = config.search_dirs
    sys.stdout.write("searched, in order:\n")
    for i, folder in enumerate(dirs, 1):
        state = "" if folder.is_dir() else "  (does not exist)"
        sys.stdout.write(f"  {i}. {folder}{state}\n")
    sys.stdout.write(f"\n{'model':22} {'kind':9} {'found in':9} {'file':40} licence\n")
    for spec in catalogue.specs:
        path = resolve_model_file(spec, dirs)
        where = f"{dirs.index(path.parent) + 1}." if path is not None and path.parent in dirs else "missing"
        sys.stdout.write(f"{spec.name:22} {spec.kind:9} {where:9} {spec.file:40} {spec.licence}\n")
    return 0


def _cmd_models_download(args: argparse.Namespace) -> int:
    catalogue = Catalogue.load()
    models_dir = PipelineConfig(models_dir=args.models_dir).search_dirs[0]
    for name in args.names:
        path = download_model(
            catalogue.get(name),
            models_dir,
            allow_unverified=args.allow_unverified,
            progress=Progress(name, "B"),
        )
        sys.stdout.write(f"{name}: {path}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    verbose = verbosity_parser()
    parser = argparse.ArgumentParser(prog="faceswap", description=__doc__, parents=[verbose])
    parser.add_argument("--version", action="version", version=f"faceswap-serve {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    swap = sub.add_parser(
        "swap",
        parents=[verbose],
        help="swap the face of SOURCE onto the face(s) in TARGET",
        description="Swap the largest face of SOURCE onto the selected face(s) of TARGET and write OUTPUT. "
        "Prints one JSON line: the output, the faces processed and the models that ran.",
        epilog=EXIT_CODES,
    )
    swap.add_argument("source", help="image with the face to put in (JPEG, PNG or WebP)")
    swap.add_argument("target", help="image whose face(s) are replaced")
    swap.add_argument(
        "-o", "--output", required=True, help="output image (.jpg or .png); its folder must exist"
    )
    swap.add_argument(
        "--no-provenance",
        dest="provenance",
        action="store_false",
        help="do not label the output as synthetic (XMP DigitalSourceType + JSON label)",
    )
    add_swap_arguments(swap)
    swap.add_argument(
        "--providers", default="cpu", help=f"ONNX Runtime providers, any of {', '.join(PROVIDERS)}"
    )
    swap.add_argument(
        "--strict-providers", action="store_true", help="fail if the first provider is inactive"
    )
    swap.set_defaults(func=_cmd_swap)

    models = sub.add_parser("models", parents=[verbose], help="list or download catalogue models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser(
        "list", parents=[verbose], help="the folders searched and which catalogue models each holds"
    )
    listing.add_argument(
        "--models-dir", type=Path, help="models folder (default $FACESWAP_MODELS_DIR or cache)"
    )
    listing.add_argument(
        "--shared-assets", action="store_true", help="also search the project's shared test assets"
    )
    listing.set_defaults(func=_cmd_models_list)
    fetch = models_sub.add_parser("download", parents=[verbose], help="download models by catalogue name")
    fetch.add_argument("names", nargs="+", help="catalogue names (see `faceswap models list`)")
    fetch.add_argument(
        "--models-dir", type=Path, help="where to put them (default $FACESWAP_MODELS_DIR or cache)"
    )
    fetch.add_argument("--allow-unverified", action="store_true", help="accept entries without a sha256")
    fetch.set_defaults(func=_cmd_models_download)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    try:
        return int(args.func(args))
    except FaceSwapError as error:
        sys.stderr.write(f"faceswap: error: {error.message}\n")
        return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
