"""``python -m quantlab.models train [--epochs N] [--seed S] [--threads T] [--out PATH]`` (see :func:`.cnn.main`)."""

from .cnn import main

if __name__ == "__main__":
    main()
