"""FL orchestration layer of threshold-fl (the paper's "FL Orchestration").

Sans-I/O state machines and typed messages for the three protocol stages: threshold
key agreement, encryption-mask agreement and masked FedAvg rounds.  The state
machines arrive in a later issue; this package is their home.

Layering (checked by ``tests/test_layering.py``): code here may use
``threshold_fl.crypto`` and ``threshold_fl.ml``, but never ``transports``, never
asyncio or sockets, and never a clock or a randomness source of its own (no
``time``, ``random``, ``secrets``, ``os.urandom``): time and randomness are passed
in by the caller, so every state machine is deterministic and testable.
"""
