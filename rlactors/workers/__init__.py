"""`RolloutWorker` and `LearnerWorker`: plain classes that run without Ray (a group in
`rlactors.distributed` makes them actors), with what only they use (learner state files,
data-parallel collectives, memory measurement).

Imports the loader, engine and core layers; never the distributed or trainer layers.
"""
