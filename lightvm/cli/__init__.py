"""The ``lightvm`` command: main (parser, dispatch) and one module per command group.

Nothing outside this package imports it.
"""
