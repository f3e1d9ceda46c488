"""Host-side converter: fp32 ONNX model + calibration data -> the artifact a device profile wants, measured
and packed into one signed bundle. Entry points: `pipeline.convert` (library) and `cli.run_convert` (CLI).
"""
