"""`fognode` with the ledger role registered (until node/roles.py lists it among the built-in
roles; then this adds nothing). Used by the multi-process tests.

    python -m tests.ledger.daemon_with_ledger run --datadir D ...
"""
from __future__ import annotations

import sys

from fognode.node import roles

LEDGER = "fognode.ledger.protocol:LedgerRole"
if LEDGER not in roles.BUILTIN_ROLES:
    roles.BUILTIN_ROLES = (*roles.BUILTIN_ROLES, LEDGER)

from fognode.tools.fognode import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
