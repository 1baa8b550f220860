"""Benchmark and soak for the chat relay: fake upstream, floor relay and server, each in its own process."""
