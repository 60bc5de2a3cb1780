"""The HTTP edge: the REST resource tree and the WebSocket attach."""
