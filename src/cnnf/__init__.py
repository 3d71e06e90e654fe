"""cnnf: CNN-F, convolutional networks with recurrent generative feedback (NeurIPS 2020)."""

from cnnf.model import CNNF, Feedback, Inference
from cnnf.zoo import create_model, list_models

__all__ = ["CNNF", "Feedback", "Inference", "create_model", "list_models"]
__version__ = "0.1.0"
