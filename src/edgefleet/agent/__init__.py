"""The edgefleet device agent: follows the desired bundle over MQTT, verifies and runs it, answers
inference requests and reports status and telemetry. Imports runtimes only, never TensorFlow/torch/onnx.
"""
