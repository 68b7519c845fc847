"""Integration tests: real clients, real servers and a real DNS server, all on loopback."""
