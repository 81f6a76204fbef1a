"""Process-level helpers: torch threads, the decoder's worker threads, the allocator.

Entry points (the node, the CLI, the benchmark) choose the policy with
``process.configure_process``; the pipeline only uses the workers it is handed.
"""
