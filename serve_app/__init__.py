"""Ray Serve layer of faceswap-serve: model deployments, the HTTP ingress and the application builder
(``serve_app.app:build_app``). The face-processing core lives in ``pipeline`` and never imports Ray."""
