"""LLM chat backend (FastAPI)."""
