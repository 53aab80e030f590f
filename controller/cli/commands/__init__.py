"""The API commands of the `labcloud` CLI, one module per resource; each has `register(subparsers)`."""
