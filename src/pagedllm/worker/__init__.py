"""Workers: executors that run the model runner on a device."""
