"""``python -m feature_store`` runs the command line."""

from feature_store.cli import main

main()
