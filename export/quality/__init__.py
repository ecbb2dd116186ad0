"""The paper's quality metrics (reward, diversity, coherence) and an independent sentiment check, for benchmarks/quality."""
