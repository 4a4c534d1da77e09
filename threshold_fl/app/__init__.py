"""The application: the ``threshold-fl`` command and what it runs.

Commands (``cli``, ``party_cli``, ``setup_cli``, ``train``, ``privacy_eval``), the
multi-process demo (``demo``, ``demo_report``), in-process federation runs
(``federation``, ``rounds``) and party processes with their drills (``party``).
The library below (``threshold_fl.crypto``, ``ml``, ``identity``, ``node``,
``protocols``, ``transports``) never imports this package; see docs/architecture.md.
"""
