"""Pure-PyTorch trial workers: data on the device, train, measure. Never imports Ray."""
