"""The `spot` command line: parses arguments, calls the library, renders. No logic lives here.

Installed under the import name ``spotinference_cli`` (see pyproject.toml), so this folder's
generic name cannot collide with another distribution's ``cli`` package.
"""
