"""Process-level helpers (torch threads, the decoder's worker threads, the allocator).

Entry points (the node, the CLI) choose the policy; the pipeline only uses the pool.
"""
