"""`python -m guppyforge` runs the command line."""

from guppyforge.apps.cli import main

main()
