"""Data files shipped in the package: the demo RM's trained score head (and the MiniLM encoder RM's), the sentiment prompts (train/eval splits) and
800 more held-out prompts on other topics (split "heldout", for measurements that need many prompts: args-bench reward-shift)."""

from pathlib import Path

DATA = Path(__file__).resolve().parent
SENTIMENT_HEAD = DATA / "sentiment_head.json"
MINILM_HEAD = DATA / "minilm_sentiment_head.json"  # args-build-sentiment-pairs --encoder-head-out
SENTIMENT_PROMPTS = DATA / "sentiment_prompts.jsonl"
SENTIMENT_HELDOUT = DATA / "sentiment_prompts_heldout.jsonl"
