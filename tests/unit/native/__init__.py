"""Tests of the Rust core, statekit._native, against plain-Python references."""
