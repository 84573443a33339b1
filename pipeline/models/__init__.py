"""One class per model; each takes its ONNX Runtime session (or classical resources) injected."""
