"""One module per CLI sub-command (``add_arguments`` + ``run``)."""
