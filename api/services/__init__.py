"""Service functions: keyword-only, take a session, raise `api.errors.ServiceError`. They never
import FastAPI, so the worker reuses them."""
