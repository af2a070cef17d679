"""The web console: a chat playground and a live view of the engine, served at `/`."""
