"""``python -m caliali`` runs the command line."""

from caliali.cli import main

if __name__ == "__main__":
    main()
