"""Credentials, certificates, signatures and broker access rules (secure by default)."""
