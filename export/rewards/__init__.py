"""Reward models for ARGS: Bradley–Terry training on preference pairs (`args-train-rm`) and the demo's sentiment
preference data (`args-build-sentiment-pairs`)."""
