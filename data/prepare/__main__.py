"""`python -m data.prepare`: the command line lives in tools.data_commands, above the data layer."""
from tools.data_commands import prepare_main

raise SystemExit(prepare_main())
