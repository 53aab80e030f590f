"""The `labcloud` command: run an all-in-one cloud (up/down/status) and use its API from the shell."""
