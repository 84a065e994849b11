"""Command-line tools (scripts); a package only so that they share tools/_threads.py, imported before torch."""
