"""The client side: Executor, futures, transports."""
