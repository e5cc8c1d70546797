"""``python -m simgen``: the command line."""

from simgen.cli import main

main()
