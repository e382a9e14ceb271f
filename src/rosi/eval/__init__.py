"""Evaluation (``rosi eval``): suites of public prompt sets, the generation cache, scoring with a
judge, utility through lm-evaluation-harness, typed results and the report.

Depends on :mod:`rosi.model`, :mod:`rosi.prompts` and :mod:`rosi.judges` only, so it can measure
any model, edited by rosi or not.
"""
