"""`spot sim cloud`: an emulator of the Hyperstack API whose VMs are node directories on this machine."""
