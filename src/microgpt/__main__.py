"""``python -m microgpt`` (and ``torchrun -m microgpt``) runs the CLI."""

from microgpt.cli.main import main

if __name__ == "__main__":
    main()
