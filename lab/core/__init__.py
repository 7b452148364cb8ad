"""What every stage uses: errors and exit codes, the console, atomic files, where state lives."""
