"""`python -m reproduce.cli`: the command line (the detached controller runs it this way)."""
from reproduce.cli import main

main()
