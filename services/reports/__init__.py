"""Tables and PNG figures of teacher allocation and router quality for the CLI, pipeline and benchmarks."""
