"""Typed errors. Each carries the HTTP status and a stable machine-readable code; the HTTP layer maps
them to JSON responses in one place, the CLI to messages and exit codes."""

from __future__ import annotations


class FaceSwapError(Exception):
    """Base class: ``status`` is the HTTP status, ``code`` a stable snake_case identifier."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, object]:
        return {"success": False, "error": self.message, "code": self.code}


class InvalidInputError(FaceSwapError):
    """The request is malformed: missing field, bad option value, undecodable image."""

    status = 400
    code = "invalid_input"


class InvalidOptionError(InvalidInputError):
    """An option is unknown, non-numeric or out of range."""

    code = "invalid_option"


class UnsupportedMediaError(FaceSwapError):
    """The upload is not a supported image/video type (checked by magic bytes)."""

    status = 415
    code = "unsupported_media_type"


class PayloadTooLargeError(FaceSwapError):
    """Upload bytes or decoded pixel count over the configured limit."""

    status = 413
    code = "payload_too_large"


class NoFaceError(FaceSwapError):
    """No face found in the source or target image."""

    status = 422
    code = "no_face"


class UnsupportedOptionError(FaceSwapError):
    """A valid option that the loaded models/profile cannot honour."""

    status = 422
    code = "unsupported_option"


class ModelNotFoundError(FaceSwapError):
    """A model file is not in the models directory and may not be downloaded."""

    status = 503
    code = "model_not_found"


class ModelContractError(FaceSwapError):
    """A model's graph does not have the inputs/outputs its wrapper implements."""

    status = 500
    code = "model_contract"


class ProviderError(FaceSwapError):
    """An ONNX Runtime execution provider was required but is not active."""

    status = 500
    code = "provider_unavailable"


class DownloadError(FaceSwapError):
    """A model download failed or its hash did not match."""

    status = 502
    code = "download_failed"


class CatalogueError(FaceSwapError):
    """The model catalogue (pipeline/models.yaml) is malformed."""

    status = 500
    code = "bad_catalogue"


class OverloadedError(FaceSwapError):
    """The service sheds load."""

    status = 503
    code = "overloaded"
