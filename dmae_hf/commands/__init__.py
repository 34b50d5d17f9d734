"""Sub-commands of the `dmae` CLI, one module each (see `dmae_hf/cli.py`)."""
