"""Job handlers; importing this package registers every job kind."""
