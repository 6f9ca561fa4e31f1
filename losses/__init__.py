from .retrieval import LossOutput, RetrievalLoss

__all__ = ["LossOutput", "RetrievalLoss"]
