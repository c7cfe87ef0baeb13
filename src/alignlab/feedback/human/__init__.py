"""Human feedback: the labelling app and its store, and hybrid routing of pairs between AI and people."""
