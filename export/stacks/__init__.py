"""Export-ready decoder stacks, one module per family on the shared pieces of base.py; architectures.py registers them."""
