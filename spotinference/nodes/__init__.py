"""Talking to one machine: run a command, copy a file, follow a log (``transport``), over SSH
(``ssh``) or on this machine for emulated nodes (``local``); and the engine's bootstrap."""
