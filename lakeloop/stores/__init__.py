"""Where the running loop keeps what it has seen: the prediction and feedback logs."""
