"""`python -m data.check`: the command line lives in tools.data_commands, above the data layer."""
from tools.data_commands import check_main

raise SystemExit(check_main())
