"""Device simulators that speak the real wire protocols (PROTOCOLS.md), for tests and demos."""
