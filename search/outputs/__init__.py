"""What a search leaves: storage, the experiment folder, results, export, retrain, report."""
