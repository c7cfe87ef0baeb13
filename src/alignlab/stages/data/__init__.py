"""Data stages: write a built-in task's datasets, sample and label pairs, label reasoning steps."""
