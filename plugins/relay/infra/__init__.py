"""Running things: the local stack, the Ray cluster connection and the Ray Jobs client."""
