"""Feedback stages: make training data from AI and human feedback (SL-CAI revisions, RLAIF labels, hybrid routing)."""
