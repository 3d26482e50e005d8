"""Tinyx: a minimal Linux VM for one application (the platform kernel so far; docs/tinyx.md)."""
