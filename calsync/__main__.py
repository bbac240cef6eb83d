"""`python -m calsync`: the command line, for processes that start calsync without its script on PATH."""

from calsync.cli import main

main()
