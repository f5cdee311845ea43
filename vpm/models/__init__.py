"""The image and text models: loading, ONNX export and running, and what each one carries (thresholds, text support)."""
