"""The program a golden-set Job runs: ``python -m inferstack.golden`` (see core/golden.py)."""
