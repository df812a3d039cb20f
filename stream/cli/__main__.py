"""`python -m stream.cli ...`: the same as the `segmenter` command."""

from stream.cli import main

main()
