"""I/O layer of threshold-fl: moving bytes between parties.

Home of the MQTT transport (aiomqtt), an in-memory transport for tests, chunking of
large payloads and signed envelopes.  A transport knows bytes, topics and party
identities only.

Layering (checked by ``tests/test_layering.py``): code here imports neither
``protocols`` nor the crypto backend (``threshold_fl.crypto``, ``openfhe``).  Only
the composition layer in ``threshold_fl`` wires protocols to transports.
"""
