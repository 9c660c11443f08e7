"""Benchmarks of the library and the service, run from the repository root as `python -m benchmarks.<name>`.

Not part of the installed packages; their extra dependencies are the `bench` extra
(`pip install -e ".[bench]"`). Nothing in `treelora_core`, `api` or `worker` imports them.
"""
