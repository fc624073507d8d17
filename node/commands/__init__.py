"""Command groups of `openlora-node`: each module exports a click command or group named `command`."""
