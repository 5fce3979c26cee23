"""``python -m inferstack.standin [--judge]``: the same as ``inferstack-standin``."""

from inferstack.standin.main import main

main()
