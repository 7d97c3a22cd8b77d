"""The built-in demo: a local llama.cpp teacher pool and an arithmetic problem set with known answers."""
