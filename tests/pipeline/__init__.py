"""Tasks, training, the command line and run directories, end to end on a tiny random Llama."""
