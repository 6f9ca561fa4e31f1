"""The web pages of serve.py (FastAPI + uvicorn, the optional requirements-web.txt): the search page over an
index (search.py), the evaluation browser (evaluation.py), and what both share (common.py, pages/)."""
