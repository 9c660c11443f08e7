"""`python -m client`: the same as the `treelora` command."""

from .cli import main

main()
