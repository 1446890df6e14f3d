"""The FastAPI backend that serves the digits model."""
