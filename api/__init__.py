"""The HTTP service: FastAPI routes over service functions, ORM models, settings, storage."""
