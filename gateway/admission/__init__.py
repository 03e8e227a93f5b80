"""Admission: the gateway's queue in front of each model's servers (capacity, fairness across keys, priority).

`Admission` (gates.py) is the pipeline's `queue` stage; priority.py (the classes), fair.py (the line's order),
capacity.py (how many at once), gate.py (slots, waiting, bounds). Nothing is imported here, so that the metrics
module may import the classes without a cycle.
"""
