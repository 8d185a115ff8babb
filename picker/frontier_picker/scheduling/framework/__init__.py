"""The scheduling framework: extension points, the per-request cycle, profiles, the scheduler and the config
loader. It imports no plugin; plugins import it (checked by the import contracts in `make lint`)."""
