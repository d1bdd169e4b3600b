"""Running a search: the driver, the cluster checks, the searcher, the study and progress."""
