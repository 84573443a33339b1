"""Face-processing core of faceswap-serve: detection, alignment, embedding, swap, enhancement.

This package imports no Ray; `serve_app` is the thin Ray layer over it.
"""
