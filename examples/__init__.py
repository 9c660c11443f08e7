"""Runnable examples, from the repository root: `python -m examples.library_demo` (the library alone)
and `python -m examples.service_demo` (a running service over HTTP). They need the `bench` extra."""
