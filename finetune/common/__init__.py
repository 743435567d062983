"""What every stage shares: errors, the CLI wrapper, atomic files, memory
and GPU set-up."""
