"""Fidelity: how far an artifact's outputs are from the fp32 model's, each output judged by the measure its
kind calls for (top-1, detection F1, mask IoU, CTC strings, SQNR/cosine) or by the user's own hook."""
