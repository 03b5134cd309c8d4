"""``kiln dashboard``: web pages over the prediction log, the registry and the run folders."""
