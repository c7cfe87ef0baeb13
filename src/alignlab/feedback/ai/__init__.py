"""AI feedback: the constitution, LLM backends (local, HTTP, our server), SL-CAI critique/revision, RLAIF labels, pairwise judges."""
