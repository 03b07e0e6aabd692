"""Training with Lightning: the module, EMA, callbacks and checkpoint I/O."""
