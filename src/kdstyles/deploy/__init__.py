"""A trained network leaves kdstyles: ONNX and TorchScript exports with their sidecar and model
card (``export``), int8 and fp16 exports verified on the test split (``quantize``), prediction
on new images without torch for ONNX (``predict``), and what a network costs (``measure``).
Nothing here is imported with the package, so ``predict`` stays torch-free."""
