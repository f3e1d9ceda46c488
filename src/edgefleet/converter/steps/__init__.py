"""Conversion steps: small objects with one job each, composed into a pipeline by `converter.pipeline`."""
