"""Model and data sources beyond an fp32 ONNX file and .npz arrays: PyTorch modules and factories, Keras
model files, and folders of images with declared preprocessing.
"""
