"""Scale: thousands of simulated trials through the real driver, searcher and ASHA."""
