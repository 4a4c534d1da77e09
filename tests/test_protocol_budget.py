"""The decryption budget (issue 16, item 4): the flooding noise is sized for Q shares per
key, so the aggregator counts every decrypted ciphertext of an epoch and rotates keys
before a round could exceed Q, and the rounds stay correct across rotations."""

from __future__ import annotations

import pytest
from protocol_harness import AGGREGATOR, Network, assert_models_match_fedavg, build_manifest
from test_protocol_dropouts import key_epochs

from protocols.fusion import QueryBudget
from threshold_fl.crypto import threshold_params

ALL = {"client1", "client2", "client3"}


@pytest.mark.parametrize(("queries", "epochs"), [(3, 3), (5, 2), (1 << 16, 1)])
def test_keys_rotate_before_the_budget_is_spent(queries: int, epochs: int) -> None:
    """40 values: one ciphertext per decryption; a round needs room for two (a retry).
    Q = 3: the mask and round 1, then rounds 2-3, then round 4: three epochs."""
    params = threshold_params(3).with_changes(decryption_queries=queries)
    net = Network(build_manifest(3, rounds=4, length=40, params=params))
    net.start()
    net.run()
    assert net.aborted(AGGREGATOR) is None and net.finished(AGGREGATOR)
    contributors = [e.contributors for e in net.completed_rounds(AGGREGATOR)]
    assert contributors == [tuple(sorted(ALL))] * 4
    assert_models_match_fedavg(net, ALL)  # every model right, across rotations
    assert key_epochs(net) == epochs
    assert net.aggregator._budget.used <= queries  # this epoch's count, within Q


def test_the_budget_counts_and_refuses() -> None:
    budget = QueryBudget(limit=5)
    assert budget.allows(5) and not budget.allows(6)
    budget.spend(3)
    assert budget.allows(2) and not budget.allows(3)
