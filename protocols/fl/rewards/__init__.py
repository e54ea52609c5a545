"""FL rewards and their evidence.

round_header.py: the coordinator's signed round header; merkle.py: sum trees over accepted
updates; receipts.py: round receipts and the ledger's "fl_update" receipts and their pricing;
ledger.py: the role's use of the ledger (receipt verifier, reward wallet, reward payment).
"""
