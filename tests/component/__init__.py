"""Component tests: the proxy's parts in this process, over real sockets on loopback."""
