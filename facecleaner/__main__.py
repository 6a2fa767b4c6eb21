"""``python -m facecleaner`` (also what torchrun runs with ``-m facecleaner``)."""

from facecleaner.cli import main

if __name__ == "__main__":
    main()
