"""Fault-injection helpers: a TCP proxy that cuts connections, a private PostgreSQL the tests
may stop and restart, and the one set of checks every fault scenario ends with."""
