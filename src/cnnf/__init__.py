"""cnnf: CNN-F, convolutional networks with recurrent generative feedback (NeurIPS 2020)."""

from cnnf.backend import get_backend, set_backend, use_backend
from cnnf.checkpoint import load_model, load_pretrained
from cnnf.model import CNNF, Feedback, Inference
from cnnf.zoo import create_model, list_models

__all__ = ["CNNF", "Feedback", "Inference", "create_model", "get_backend", "list_models", "load_model",
           "load_pretrained", "set_backend", "use_backend"]
__version__ = "0.1.0"
