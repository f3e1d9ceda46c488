"""Model compression before quantization: structured channel pruning with distillation (PyTorch), low-rank
factorization and unstructured magnitude pruning (ONNX); each reports params, MACs, size and accuracy.
"""
