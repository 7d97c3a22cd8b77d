"""The ``persyn`` command: one module per group of subcommands, each a thin call into the library."""
