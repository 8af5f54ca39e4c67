"""What every stage shares: configs, device and distributed helpers, async I/O, data, the trainer."""
