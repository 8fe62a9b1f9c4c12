"""Test support: databases, servers in process and as processes, test doubles."""
