"""Measuring refusal, one way for everything: :class:`RefusalMeter` turns prompts into replies,
judges them with any registered judge and returns a :class:`RefusalRate` (per-prompt verdicts,
the rate and its 95% interval); :mod:`.agreement`: how often a judge agrees with the labelled replies."""

from rosi.measure.meter import RefusalMeter, check_judge, judge_of, judged
from rosi.measure.rate import RefusalRate, declined

__all__ = ["RefusalMeter", "RefusalRate", "check_judge", "declined", "judge_of", "judged"]
