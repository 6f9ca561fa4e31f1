"""`python -m data.synthetic`: runs the command line in data/synthetic/cli.py."""
from data.synthetic.cli import main

main()
