"""The `samullm` command line."""
