from .retrieval import LossOutput, RetrievalLoss, name_terms

__all__ = ["LossOutput", "RetrievalLoss", "name_terms"]
