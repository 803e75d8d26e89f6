"""batchlab: a distributed experiment scheduler with a results warehouse for batch-size studies."""

__version__ = "0.1.0"
