"""``python -m avgen`` (also what ``torchrun -m avgen`` runs)."""

from avgen._core.cli import main

if __name__ == "__main__":
    main()
