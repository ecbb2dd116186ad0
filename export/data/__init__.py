"""Data files shipped in the package: the demo RM's trained score head and the sentiment prompts (train/eval splits)."""

from pathlib import Path

DATA = Path(__file__).resolve().parent
SENTIMENT_HEAD = DATA / "sentiment_head.json"
SENTIMENT_PROMPTS = DATA / "sentiment_prompts.jsonl"
