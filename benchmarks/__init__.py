"""args-rt benchmarks: the latency harness (`args-bench`, latency.py) and the figures it writes under results/."""
