"""Evaluation (``rosi eval``, ``rosi compare``): suites of public prompt sets, the generation
cache, scoring with a judge, utility through lm-evaluation-harness, typed results and the report;
and the measurements behind the results pages: the held-out sets and their rows (:mod:`.heldout`),
refusal by style of request (:mod:`.styles`), jailbreak templates (:mod:`.jailbreak`).

Depends on :mod:`rosi.model`, :mod:`rosi.prompts`, :mod:`rosi.judges` and :mod:`rosi.measure`
only (never on the direction, the edit or export), so it can measure any model, edited by rosi or not.
"""
