"""The endpoint daemon: config, the client socket, and the dispatcher that
batches invocations by context and feeds Parsl."""
