"""Measurement and benchmark programs (not part of the installed package): each is run from the repository root as
``python -m scripts.NAME`` (``--help`` for its flags), imports ``sfda_deploy`` and, where it shares code with
another script, that script as ``scripts.OTHER``; none edits ``sys.path`` or imports the tests. Scripts whose
output sets a shipped default or fills docs/benchmark.md have tests on tiny data (tests/test_*script*, ...).
"""
