"""Command-line edge: parse -> call one store operation -> render (human or ``--json``).

Owns: argument parsing, output, progress bars, and the single place where an
``ApplianceError`` becomes an exit code (``main``). Does not own behaviour.
"""
