"""mirante's terminal side: the `mirante` command and the Textual app. Never imports torch."""
