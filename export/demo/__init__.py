"""The embedded default: the packaged SmolLM2-135M-Instruct, the sentiment reward model on its backbone, their bundle
(cached), and `args-demo`, which runs ARGS and plain greedy on them."""
