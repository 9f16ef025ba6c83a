"""Demos of statekit, larger than the examples; run them from the repository root
(``python -m demo.<name>``)."""
