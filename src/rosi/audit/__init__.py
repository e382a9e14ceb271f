"""Audit a model: what was done to its weights (abliteration, ROSI), with or without its base."""

from rosi.audit.audit import Audit, Profile, audit, write_report

__all__ = ["Audit", "Profile", "audit", "write_report"]
