"""Where shells run: runtime connectors and their PTY streams."""
