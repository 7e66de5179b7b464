"""One module per command group; each command is a few lines over a library call."""
