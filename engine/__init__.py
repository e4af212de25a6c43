"""mirante's training side: events, the run store, and (with torch) models and the training loop."""
